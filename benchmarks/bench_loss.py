"""Peak memory and time of one contrastive-loss forward + backward: openeva's tiled loss vs open_clip's ClipLoss.

Each (implementation, batch) runs in a fresh subprocess that reports its own peak resident memory above the
point where its inputs exist (on CPU: the kernel's high-water mark, reset with /proc/self/clear_refs when the
kernel allows it, else ``ru_maxrss``; on CUDA: ``torch.cuda.max_memory_allocated``). Python-level tools such as
tracemalloc do not see torch's allocations, and a fresh process keeps one run's peak out of the next.

open_clip configurations whose B x B logits matrix would exceed ``--max-matrix-gib``, or whose estimated peak
(about six B x B matrices) exceeds the available memory, are recorded as skipped ("OOM-risk"), not run.

    .venv/bin/python benchmarks/bench_loss.py --batches 4096,8192,16384,32768,65536 --dim 512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _common import (
    available_bytes, environment, memory_method, peak_rss_bytes, reset_peak_rss, rss_bytes, run_worker,
)

IMPLS = ("openeva_tiled", "open_clip")
DENSE_MATRICES_AT_PEAK = 6  # open_clip measured ~4 B x B fp32 matrices at peak (16k, CPU); 6 leaves a margin


def _make_loss(impl: str, tile_size: int):
    if impl == "openeva_tiled":
        from openeva.losses import ClipLoss

        return ClipLoss(tiled=True, tile_size=tile_size)
    if impl == "open_clip":
        import open_clip.loss

        return open_clip.loss.ClipLoss()
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def worker(impl: str, batch: int, dim: int, tile_size: int, device: str, seed: int, repeats: int = 1,
           threads: int = 2) -> dict:
    """``repeats`` forward + backward passes here; -> value, gradient norms, best seconds, peak bytes above inputs."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    loss_fn = _make_loss(impl, tile_size)
    # Warm up kernels and thread pools on a small batch so the timed run measures the loss, not start-up.
    small = F.normalize(torch.randn(256, dim, device=device), dim=-1)
    loss_fn(small, small, torch.tensor(10.0, device=device))

    gen = torch.Generator(device="cpu").manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    logit_scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_worked = reset_peak_rss()
        base = rss_bytes()
    times = []
    for _ in range(repeats):
        image.grad = text.grad = logit_scale.grad = None
        start = time.perf_counter()
        loss = loss_fn(image, text, logit_scale)
        loss.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes(reset_worked)
    return {
        "loss": loss.item(),
        "image_grad_norm": image.grad.norm().item(),
        "text_grad_norm": text.grad.norm().item(),
        "logit_scale_grad": logit_scale.grad.item(),
        "seconds": min(times),
        "seconds_all": times,
        "peak_bytes": max(0, peak - base),
        "memory_method": "cuda.max_memory_allocated" if device.startswith("cuda") else memory_method(reset_worked),
    }


def _skip_reason(impl: str, batch: int, max_matrix_gib: float, device: str) -> str | None:
    if impl != "open_clip":
        return None
    matrix = batch * batch * 4
    if matrix > max_matrix_gib * 2**30:
        return f"OOM-risk: one B x B fp32 matrix is {matrix / 2**30:.1f} GiB > {max_matrix_gib} GiB"
    available = available_bytes() if device == "cpu" else None
    if available is not None and DENSE_MATRICES_AT_PEAK * matrix > 0.8 * available:
        return (
            f"OOM-risk: ~{DENSE_MATRICES_AT_PEAK * matrix / 2**30:.1f} GiB estimated peak, "
            f"{available / 2**30:.1f} GiB available"
        )
    return None


def _run_in_subprocess(impl: str, batch: int, args) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", impl, "--batches", str(batch), "--dim", str(args.dim),
        "--tile-size", str(args.tile_size), "--device", args.device, "--seed", str(args.seed),
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    return run_worker(cmd, args.timeout)


def _compare(rows: list[dict]) -> None:
    """Add the open_clip/ours memory ratio and value agreement to each batch where both ran."""
    by_batch: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_batch.setdefault(row["batch"], {})[row["impl"]] = row
    for batch, impls in by_batch.items():
        ours, theirs = impls.get("openeva_tiled"), impls.get("open_clip")
        if not (ours and theirs and ours["status"] == theirs["status"] == "ok"):
            continue
        rel = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
        grad_rel = max(
            abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12)
            for k in ("image_grad_norm", "text_grad_norm", "logit_scale_grad")
        )
        ours["loss_rel_diff_vs_open_clip"] = rel
        ours["grad_rel_diff_vs_open_clip"] = grad_rel
        ours["values_match"] = rel < 1e-4 and grad_rel < 1e-3
        ours["memory_ratio_open_clip_over_ours"] = theirs["peak_bytes"] / max(ours["peak_bytes"], 1)


def _table(rows: list[dict]) -> str:
    lines = [
        "| batch | impl | status | peak memory (MiB) | best time (s) | loss | open_clip / ours memory | values match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["batch"], r["impl"])):
        if r["status"] == "ok":
            ratio = r.get("memory_ratio_open_clip_over_ours")
            match = r.get("values_match")
            lines.append(
                f"| {r['batch']} | {r['impl']} | ok | {r['peak_bytes'] / 2**20:.0f} | {r['seconds']:.2f} | "
                f"{r['loss']:.6f} | {f'{ratio:.1f}x' if ratio else ''} | {'' if match is None else match} |"
            )
        else:
            lines.append(f"| {r['batch']} | {r['impl']} | {r['status']}: {r.get('reason', '')} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="4096,8192,16384,32768,65536", help="comma-separated batch sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--max-matrix-gib", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in each worker")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per configuration (best is kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loss_memory.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",") if b]
    if args.worker:
        print(json.dumps(worker(args.worker, batches[0], args.dim, args.tile_size, args.device, args.seed, args.repeats,
                               args.threads)))
        return 0
    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown --impls {unknown}; choose from {IMPLS}")

    rows = []
    for batch in batches:
        for impl in impls:
            reason = _skip_reason(impl, batch, args.max_matrix_gib, args.device)
            result = {"status": "skipped", "reason": reason} if reason else _run_in_subprocess(impl, batch, args)
            row = {"impl": impl, "batch": batch, "dim": args.dim, **result}
            rows.append(row)
            print(f"{impl} B={batch}: {row['status']} {row.get('peak_bytes', '')}", file=sys.stderr, flush=True)
    _compare(rows)

    import torch

    torch.set_num_threads(args.threads)
    report = {
        "benchmark": "contrastive loss forward+backward, one process",
        "dtype": "float32",
        "dim": args.dim,
        "tile_size": args.tile_size,
        "device": args.device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "memory": "peak resident (or CUDA allocated) bytes above the inputs, in a fresh process per row",
        "machine": environment(args.device),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(_table(rows))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
