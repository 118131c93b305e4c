"""What this machine computes fast: the one place that turns precision "auto" into fp32 or bf16.

bf16 autocast only pays where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs whose
oneDNN has bf16 kernels (AVX-512 BF16 or AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). On an
AVX2-only CPU bf16 is emulated and measured 7-10x slower than fp32 (issue 10), so "auto" keeps fp32 there.
An explicit precision is always kept: this module decides nothing the user already decided.
"""

from __future__ import annotations

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _amx() -> bool:
    """AMX tiles (Intel Sapphire Rapids on): bf16 matmuls ~6x fp32 where AVX-512 BF16 alone gives ~2x. torch's
    capability string says "AVX512" for both, so a benchmark figure records this too."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_capability() -> dict:
    """The CPU facts that decide which precision is fast, for logs, run directories and benchmark JSON."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # "AVX2", "AVX512", ...
        "mkldnn_bf16": _mkldnn_bf16(),
        "amx": _amx(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without including_emulation
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: str | torch.device = "cpu", int8: bool = False) -> tuple[str, str]:
    """-> (precision, reason). "auto": bf16 where the device has native bf16, else fp32; others kept as given.

    ``int8``: the model's Linear layers are dynamically quantized (``openeva.quantize_int8``). Those kernels take
    fp32 activations only, so "auto" is fp32 then and an explicit bf16/fp16 is refused.
    The reason is one line meant for the start of a run's log, e.g.
    ``"this CPU has no native bf16 (AVX2)"``.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if int8:
        if requested not in ("auto", "fp32"):
            raise ValueError(f"int8 inference computes in fp32 around its int8 Linear layers; precision "
                             f"{requested!r} cannot be combined with it (use precision auto or fp32)")
        return "fp32", "int8 Linear layers take fp32 activations" if requested == "auto" else "set explicitly"
    if requested != "auto":
        return requested, "set explicitly"
    dev = torch.device(device)
    if dev.type == "cuda":
        if _cuda_bf16(dev):
            return "bf16", "this GPU has native bf16"
        return "fp32", "this GPU has no native bf16 (pass precision=fp16 for autocast with loss scaling)"
    if dev.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        if _mkldnn_bf16():
            return "bf16", f"this CPU has native bf16 in oneDNN ({cap})"
        return "fp32", f"this CPU has no native bf16 ({cap}); bf16 would be emulated and slower"
    return "fp32", f"no bf16 policy for device type {dev.type!r}"


def describe_precision(requested: str, device: str | torch.device = "cpu") -> str:
    """The line printed at the start of a run: ``precision auto -> fp32: <reason>``."""
    precision, reason = resolve_precision(requested, device)
    return f"precision {requested} -> {precision}: {reason}"


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> the GPU of this local rank where CUDA is available, else the CPU (training, evaluation and
    serving all place models through this one rule)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available (use device=cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
