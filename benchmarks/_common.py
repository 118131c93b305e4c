"""Helpers shared by the benchmark scripts: peak memory of a process, interleaved timing, machine description.

Scripts run as ``python benchmarks/<script>.py``, so this module is imported as ``_common`` (the script's folder
is first on ``sys.path``), in the parent and in the fresh worker subprocesses that measure memory.

Peak memory on CPU is the kernel's high-water mark of resident memory (VmHWM), reset through
``/proc/self/clear_refs`` where the kernel allows it (else ``ru_maxrss``, which cannot be reset). Python-level
tools such as tracemalloc do not see torch's allocations, and one fresh process per measurement keeps one
configuration's peak out of the next.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

RESULTS_DIR = Path(__file__).parent / "results"


# ------------------------------------------------------------------------------------------------ memory
def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_worked: bool) -> int:
    """Peak resident memory since the last reset (or since the process started, if resetting failed)."""
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_method(reset_worked: bool) -> str:
    return "VmHWM (reset)" if reset_worked else "ru_maxrss"


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field ("MemAvailable", "MemTotal") in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> int | None:
    return meminfo_bytes("MemAvailable")


def run_worker(cmd: list[str], timeout: float) -> dict:
    """Run a worker subprocess that prints one JSON object as its last stdout line; -> that object + status."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"over {timeout} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"rc {proc.returncode}"]
        return {"status": "failed", "reason": tail[0], "returncode": proc.returncode}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result


# ------------------------------------------------------------------------------------------------ timing
def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, the implementations taking turns within every repeat.

    Under CPU contention from other processes a slow stretch then hits every implementation alike. The order
    alternates between repeats (A B, B A, A B, ...) so neither always runs first (warm caches, turbo state).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------------------------- weights
@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random at a scale that keeps activations O(1), in place.

    Library inits leave biases at 0, norms at 1 and heads tiny (timm scales its head by 1e-3), so outputs near
    zero would hide disagreements and could drift into denormal numbers, which are slow on CPU.
    ``logit_scale`` keeps its initial value.
    """
    g = torch.Generator().manual_seed(seed)
    norm_weights = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "logit_scale":
            continue
        if name in norm_weights:
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif p.ndim >= 2 and leaf not in ("cls_token", "pos_embed", "positional_embedding"):
            fan_in = p.shape[0] if leaf == "text_projection" else p[0].numel()  # x @ P: fan-in is dim 0
            value = torch.randn(p.shape, generator=g) / fan_in ** 0.5
        else:  # biases, q/v biases, tokens, position embeddings
            value = 0.1 * torch.randn(p.shape, generator=g)
        p.copy_(value.to(p.dtype))
    return model


def open_clip_to_openeva(ref: nn.Module, name: str) -> nn.Module:
    """An openeva CLIP model ``name`` holding the weights of the open_clip model ``ref`` (strict load)."""
    import openeva
    from openeva.checkpoints import detect_format, to_openeva

    sd = ref.state_dict()
    ours = openeva.create_model(name)
    ours.load_state_dict(to_openeva(sd, detect_format(sd), is_clip=True), strict=True)
    return ours


def quiet_open_clip():
    """Silence open_clip's 'no pretrained weights loaded' warning (it logs on the root logger)."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------- machine
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_matmul_features() -> list[str]:
    """The CPU flags that decide low-precision matmul speed (AVX-512 BF16/VNNI, Intel AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
            return [f for f in wanted if f in flags]
    return []


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def environment(device: str = "cpu") -> dict:
    """What a reader needs to compare numbers: machine, threads, library versions, load at measurement time."""
    env = {
        "device": cpu_name() if device == "cpu" else torch.cuda.get_device_name(torch.device(device)),
        "device_type": torch.device(device).type,
        "cpu_count": os.cpu_count(),
        "cpu_matmul_features": cpu_matmul_features(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": _mkldnn_bf16(),  # native bf16 matmuls; without them bf16 autocast is emulated and slow
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other processes on the machine when measured
        "openeva": openeva_revision(),
    }
    for module in ("open_clip", "timm"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    return env


def openeva_revision() -> dict:
    """The commit the numbers belong to, and whether the library source differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--", "src")
    return {"commit": commit, "src_modified": bool(status) if status is not None else None}


def write_json(path: str | os.PathLike, report: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def python_cmd(script: str, *args: str) -> list[str]:
    """The command line re-running ``script`` in a fresh interpreter (the current one)."""
    return [sys.executable, script, *args]
