"""Building a model and loading its checkpoint: time and peak memory, openeva vs open_clip, same weights.

Each measurement runs in a fresh subprocess: libraries are imported, resident memory is noted, the peak-RSS
counter reset, then the model is built and its saved checkpoint loaded (openeva: ``create_model(dir)``, which
builds on the meta device and adopts the loaded tensors; open_clip: ``create_model(name, pretrained=file)``,
which builds with random init and copies the checkpoint in). Reported: wall time and peak RSS above the
post-import baseline, against the checkpoint's size. ``--big`` models (EVA02-E-14: 17.5 GiB of fp32 weights)
get random checkpoints written tensor by tensor from meta builds, one per library's key layout (same shapes
and bytes, not the same values), since building one and saving it would need two copies; each library then
loads its file once. ``--meta`` models are built on the meta device only.

    python benchmarks/bench_model_load.py --models EVA02-B-16 --big EVA02-E-14 --meta EVA02-E-14-plus

Writes ``benchmarks/results/model_load.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    RESULTS_DIR, environment, meminfo_bytes, memory_method, peak_rss_bytes, python_cmd, reset_peak_rss, rss_bytes,
    run_worker, write_json,
)


def worker(kind: str, name: str, path: str) -> dict:
    import torch

    import openeva
    if kind == "open_clip":
        import open_clip
        from _common import quiet_open_clip

        quiet_open_clip()
    base = rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    if kind == "openeva":
        model = openeva.create_model(path)
    elif kind == "open_clip":
        model = open_clip.create_model(name, pretrained=path)
    elif kind == "openeva_meta":
        model = openeva.create_model(name, device="meta")
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - start
    peak = peak_rss_bytes(reset)
    n = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device.type
    return {"kind": kind, "model": name, "seconds": wall, "peak_rss_above_base_gb": (peak - base) / 2**30,
            "params_m": n / 1e6, "weights_gb": 4 * n / 2**30, "device": device,
            "memory_method": memory_method(reset), "torch_threads": torch.get_num_threads()}


def save_checkpoints(name: str, root: Path) -> tuple[str, str]:
    """(openeva dir, open_clip file) of the same random weights."""
    import open_clip
    import torch

    import openeva
    from _common import open_clip_to_openeva, quiet_open_clip

    quiet_open_clip()
    theirs = open_clip.create_model(name, pretrained=None)
    oc_file = root / f"{name}_open_clip.pt"
    torch.save(theirs.state_dict(), oc_file)
    ours = open_clip_to_openeva(theirs, name)
    del theirs
    oe_dir = root / f"{name}_openeva"
    openeva.save_model(ours, oe_dir)
    return str(oe_dir), str(oc_file)


def write_random_safetensors(shapes: dict, path: Path, seed: int = 0) -> None:
    """A safetensors file of N(0, 0.02) weights for ``{name: meta tensor}``, generated and written one tensor at
    a time: the checkpoint of a model too big to hold twice, made without ever building the model."""
    import struct

    import torch

    from openeva.checkpoints.io import _SAFETENSORS_DTYPES

    names = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "openeva"}}, 0
    for name, t in shapes.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for t in shapes.values():
            values = torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(t.dtype)
            f.write(memoryview(values.view(-1).view(torch.uint8).numpy()))


def write_big_checkpoints(name: str, root: Path) -> tuple[str, str]:
    """(openeva dir, open_clip .safetensors file) of random weights for ``name``, from meta builds only."""
    import open_clip
    import torch

    import openeva
    from _common import quiet_open_clip
    from openeva.factory import model_config_dict

    quiet_open_clip()
    ours = openeva.create_model(name, device="meta")
    oe_dir = root / f"{name}_openeva"
    oe_dir.mkdir(parents=True)
    write_random_safetensors(ours.state_dict(), oe_dir / "model.safetensors")
    (oe_dir / "config.json").write_text(json.dumps(model_config_dict(ours), indent=2, default=list))
    with torch.device("meta"):
        theirs = open_clip.create_model(name, pretrained=None, device="meta")
    oc_file = root / f"{name}_open_clip.safetensors"
    write_random_safetensors(theirs.state_dict(), oc_file, seed=1)
    return str(oe_dir), str(oc_file)


def _mem_total_gib() -> float | None:
    total = meminfo_bytes("MemTotal")
    return total / 2**30 if total else None


def _run_load(kind: str, name: str, path: str, timeout: float) -> dict:
    r = run_worker(python_cmd(__file__, "--worker", kind, name, path), timeout)
    r.setdefault("kind", kind), r.setdefault("model", name)
    if r.get("returncode") == -9:
        total = _mem_total_gib()
        r["reason"] = "killed by SIGKILL (the kernel's out-of-memory killer" + (
            f"; this machine has {total:.1f} GiB)" if total else ")")
    print(r, file=sys.stderr, flush=True)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="EVA02-B-16")
    p.add_argument("--big", default="", help="models loaded from checkpoints streamed from meta builds")
    p.add_argument("--meta", default="EVA02-E-14,EVA02-E-14-plus")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default=str(RESULTS_DIR / "model_load.json"))
    p.add_argument("--worker", nargs=3, metavar=("KIND", "NAME", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.models.split(",")):
            oe_dir, oc_file = save_checkpoints(name, Path(tmp))
            for kind, path in (("openeva", oe_dir), ("open_clip", oc_file), ("openeva", oe_dir),
                               ("open_clip", oc_file)):  # twice each, alternating (page cache, contention)
                rows.append(_run_load(kind, name, path, args.timeout))
        for name in filter(None, args.big.split(",")):
            oe_dir, oc_file = write_big_checkpoints(name, Path(tmp))
            rows += [_run_load("openeva", name, oe_dir, args.timeout),
                     _run_load("open_clip", name, oc_file, args.timeout)]
            shutil.rmtree(oe_dir), os.unlink(oc_file)
    for name in filter(None, args.meta.split(",")):
        rows.append(_run_load("openeva_meta", name, "-", args.timeout))
    from openeva.runtime import cpu_capability

    report = {"environment": {**environment(), **cpu_capability(), "mem_total_gib": _mem_total_gib()},
              "rows": rows}
    write_json(args.out, report)
    print("| model | how | seconds | peak RSS above base (GB) | fp32 weights (GB) |\n|---|---|---|---|---|")
    for r in rows:
        if r.get("status") == "ok":
            print(f"| {r['model']} | {r['kind']} | {r['seconds']:.2f} | {r['peak_rss_above_base_gb']:.2f} | "
                  f"{r['weights_gb']:.2f} |")
        else:
            print(f"| {r['model']} | {r['kind']} | {r.get('status')}: {r.get('reason')} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
