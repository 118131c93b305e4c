"""Building a model and loading its checkpoint: time and peak memory, openeva vs open_clip, same weights.

Each measurement runs in a fresh subprocess: libraries are imported, resident memory is noted, the peak-RSS
counter reset, then the model is built and its saved checkpoint loaded (openeva: ``create_model(dir)``, which
builds on the meta device and adopts the loaded tensors; open_clip: ``create_model(name, pretrained=file)``,
which builds with random init and copies the checkpoint in). Reported: wall time and peak RSS above the
post-import baseline, against the checkpoint's size. ``--meta`` models are built on the meta device only
(no weights: the largest EVA models do not fit next to other work on a 24 GB machine).

    python benchmarks/bench_model_load.py --models EVA02-B-16,EVA02-L-14 --meta EVA02-E-14,EVA02-E-14-plus

Writes ``benchmarks/results/model_load.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    RESULTS_DIR, environment, memory_method, peak_rss_bytes, python_cmd, reset_peak_rss, rss_bytes, run_worker,
    write_json,
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="EVA02-B-16")
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
                r = run_worker(python_cmd(__file__, "--worker", kind, name, path), args.timeout)
                r.setdefault("kind", kind), r.setdefault("model", name)
                rows.append(r)
                print(r, file=sys.stderr, flush=True)
    for name in filter(None, args.meta.split(",")):
        r = run_worker(python_cmd(__file__, "--worker", "openeva_meta", name, "-"), args.timeout)
        r.setdefault("kind", "openeva_meta"), r.setdefault("model", name)
        rows.append(r)
        print(r, file=sys.stderr, flush=True)
    from openeva.hardware import cpu_capability

    report = {"environment": {**environment(), **cpu_capability()}, "rows": rows}
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
