"""Image-encoder throughput: openeva vs open_clip on the same EVA02-B-16 weights, fp32 and bf16 autocast.

open_clip's ``EVA02-B-16`` (a timm ``Eva`` trunk) is built with random weights (every parameter drawn at an
O(1) scale, see ``_common.randomize_``), converted into ``openeva.create_model("EVA02-B-16")`` with
``openeva.checkpoints.to_openeva``, and both encoders are first checked to agree on the same images. Then
``encode_image`` runs under ``torch.inference_mode()`` in each mode and batch size, the two implementations
taking turns within every repeat (after warm-up) so that CPU contention from other processes hits both alike;
the median time per batch gives images/s. ``--profile-batch`` adds one profiled forward per implementation and
mode (top ops by self CPU time) to explain the ratio.

    .venv/bin/python benchmarks/bench_image_encoder.py --batches 8,32 --repeats 5 --threads 2

Writes ``benchmarks/results/image_encoder.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

from _common import (
    RESULTS_DIR, environment, interleaved_times, median, open_clip_to_openeva, quiet_open_clip, randomize_,
    write_json,
)

IMPLS = ("openeva", "open_clip")
MODES = ("fp32", "bf16")
FP32_MAX_REL_DIFF = 1e-4  # the parity tests' tolerance; a larger gap means the conversion is wrong


def precision_context(mode: str, device: str):
    if mode == "fp32":
        return contextlib.nullcontext()
    if mode == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def build_pair(name: str, seed: int, device: str) -> dict[str, torch.nn.Module]:
    """{"openeva": ours, "open_clip": theirs}: the same random weights, eval mode."""
    import open_clip

    quiet_open_clip()
    torch.manual_seed(seed)
    theirs = randomize_(open_clip.create_model(name, pretrained=None), seed).eval()
    ours = open_clip_to_openeva(theirs, name).eval()
    return {"openeva": ours.to(device), "open_clip": theirs.to(device)}


@torch.inference_mode()
def agreement(models: dict, images: torch.Tensor, mode: str, device: str) -> dict:
    """Max abs / relative difference of the two encoders' outputs on the same images."""
    with precision_context(mode, device):
        ours = models["openeva"].encode_image(images).float()
        theirs = models["open_clip"].encode_image(images).float()
    diff = (ours - theirs).abs()
    return {
        "mode": mode,
        "batch": images.shape[0],
        "max_abs_diff": diff.max().item(),
        "max_abs_output": theirs.abs().max().item(),
        "rel_diff": ((ours - theirs).norm() / theirs.norm()).item(),
    }


@torch.inference_mode()
def profile_forward(model: torch.nn.Module, images: torch.Tensor, mode: str, device: str, top: int) -> dict:
    """One profiled ``encode_image``: total ms and the ops with most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with precision_context(mode, device):
        model.encode_image(images)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.encode_image(images)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    return {
        "total_self_cpu_ms": round(total_us / 1e3, 1),
        "top_ops": [
            {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total_us, 3)}
            for e in events[:top]
        ],
    }


def _table(rows: list[dict]) -> str:
    lines = ["| mode | batch | openeva img/s | open_clip img/s | openeva / open_clip |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['batch']} | {r['openeva']['images_per_s']:.2f} | "
                     f"{r['open_clip']['images_per_s']:.2f} | {r['ratio_openeva_over_open_clip']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="EVA02-B-16")
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--modes", default="fp32,bf16", help=f"comma-separated subset of {MODES}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (median kept)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-batch", type=int, default=8, help="batch of the profiled forward; 0 = no profile")
    parser.add_argument("--profile-top", type=int, default=12)
    parser.add_argument("--out", default=str(RESULTS_DIR / "image_encoder.json"))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"unknown --modes {unknown}; choose from {MODES}")
    batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(args.threads)
    env = environment(args.device)

    models = build_pair(args.model, args.seed, args.device)
    size = models["openeva"].visual.cfg.img_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    check_images = torch.randn(4, 3, *size, generator=gen).to(args.device)
    checks = [agreement(models, check_images, mode, args.device) for mode in MODES]
    print(f"agreement: {checks}", file=sys.stderr, flush=True)
    if checks[0]["rel_diff"] > FP32_MAX_REL_DIFF:
        raise SystemExit(f"openeva and open_clip disagree in fp32 (rel diff {checks[0]['rel_diff']:.2e}); not timing")

    rows = []
    for mode in modes:
        for batch in batches:
            images = torch.randn(batch, 3, *size, generator=gen).to(args.device)

            def run(model, images=images, mode=mode):
                with torch.inference_mode(), precision_context(mode, args.device):
                    model.encode_image(images)

            times = interleaved_times({n: (lambda m=models[n]: run(m)) for n in IMPLS}, args.repeats, args.warmup)
            row = {"mode": mode, "batch": batch}
            for name in IMPLS:
                med = median(times[name])
                row[name] = {"seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in times[name]],
                             "images_per_s": round(batch / med, 3)}
            row["ratio_openeva_over_open_clip"] = round(row["openeva"]["images_per_s"]
                                                        / row["open_clip"]["images_per_s"], 3)
            rows.append(row)
            print(f"{mode} B={batch}: openeva {row['openeva']['images_per_s']:.2f} img/s, open_clip "
                  f"{row['open_clip']['images_per_s']:.2f} img/s, ratio {row['ratio_openeva_over_open_clip']:.3f}",
                  file=sys.stderr, flush=True)

    profiles = {}
    if args.profile_batch > 0:
        images = torch.randn(args.profile_batch, 3, *size, generator=gen).to(args.device)
        for mode in modes:
            for name in IMPLS:
                profiles[f"{name}/{mode}"] = profile_forward(models[name], images, mode, args.device, args.profile_top)

    report = {
        "benchmark": "image_encoder",
        "what": "encode_image under torch.inference_mode(), same weights in both implementations",
        "model": args.model,
        "img_size": list(size),
        "machine": env,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "settings": {"batches": batches, "modes": modes, "repeats": args.repeats, "warmup": args.warmup,
                     "seed": args.seed, "bf16": "torch.autocast(device, dtype=torch.bfloat16), fp32 weights",
                     "timing": "implementations interleaved per repeat (order alternating), median seconds"},
        "agreement": checks,
        "results": rows,
        "profile_batch": args.profile_batch,
        "profiles": profiles,
    }
    out = write_json(args.out, report)
    print(_table(rows))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
