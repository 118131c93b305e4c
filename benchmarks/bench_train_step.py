"""One CLIP training step, openeva vs open_clip at equal settings: throughput and peak memory.

A step is forward (both towers) + ClipLoss + backward + AdamW step, on one fixed batch of random images and
tokenized captions, in fp32 and in bf16 autocast (fp32 weights, loss inside autocast as open_clip's trainer
does). Both implementations get the same model, the same weights, the same batch, the same loss definition
(``openeva.losses.ClipLoss()`` vs ``open_clip.loss.ClipLoss()``, both dense on one process) and the same
optimizer (``torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)``, PyTorch's default kernels).

Models:

- ``EVA02-B-16``: open_clip's registered model (timm ``eva02_base_patch16_clip_224`` trunk + open_clip text
  tower) vs ``openeva.create_model("EVA02-B-16")`` holding its converted weights.
- ``EVA02-test``: openeva's tiny test CLIP (vision width 64, depth 2, patch 8, 32 px, sub-LN SwiGLU, RoPE;
  text width 64, 2 layers, context 77) vs the same network built the way open_clip builds its EVA models: a
  ``CustomTextCLIP`` whose vision tower is a timm ``Eva`` named through ``timm_model_name``. timm's
  ``eva02_tiny_patch14_224`` entry point is registered under a new name with the tiny sizes (and EVA-CLIP's
  separate q/k/v and sub-LNs, as ``eva02_base_patch16_clip_224`` has), since open_clip passes no size
  arguments to timm. The open_clip weights are converted into openeva and the outputs checked to agree.

Throughput: both implementations in one process, their steps interleaved (order alternating) after warm-up,
median step time, so CPU contention from other processes hits both alike; the first and last losses of each
show the two optimise identically. Memory: a fresh subprocess per (model, implementation, precision) reports
its peak resident memory (VmHWM) over two steps, in total and above the point where model, optimizer and
batch exist (activations + gradients + AdamW state + temporaries).

    .venv/bin/python benchmarks/bench_train_step.py --threads 2

Writes ``benchmarks/results/train_step.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import sys
import time

import torch

from _common import (
    RESULTS_DIR, environment, interleaved_times, median, memory_method, open_clip_to_openeva, peak_rss_bytes,
    python_cmd, quiet_open_clip, randomize_, reset_peak_rss, rss_bytes, run_worker, write_json,
)

IMPLS = ("openeva", "open_clip")
PRECISIONS = ("bf16", "fp32")
DEFAULT_BATCH = {"EVA02-B-16": 8, "EVA02-test": 64}
DEFAULT_REPEATS = {"EVA02-B-16": 5, "EVA02-test": 20}
MEMORY_STEPS = 2  # the first creates AdamW's state, the second is a steady-state step
LR, WEIGHT_DECAY = 1e-4, 0.05

# timm Eva arguments giving the same network as openeva's EVA02-test vision tower (key names differ only).
TINY_TIMM_TOWER = dict(
    img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, qkv_fused=False,
    swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
)
TINY_TIMM_NAME = "eva02_test_clip_bench"


def _register_tiny_timm_tower() -> None:
    """Registers ``eva02_test_clip_bench`` with timm (this process only): EVA-02 tiny at EVA02-test's sizes."""
    import timm
    from timm.models import register_model
    from timm.models.eva import eva02_tiny_patch14_224

    if timm.is_model(TINY_TIMM_NAME):
        return

    def eva02_test_clip_bench(pretrained: bool = False, **kwargs):
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return eva02_tiny_patch14_224(pretrained=False, **{**TINY_TIMM_TOWER, **kwargs})

    eva02_test_clip_bench.__module__ = __name__
    register_model(eva02_test_clip_bench)


def build_open_clip(name: str, seed: int) -> torch.nn.Module:
    """open_clip's model ``name`` (EVA02-test: its CustomTextCLIP equivalent), random O(1) weights, train mode."""
    import open_clip

    quiet_open_clip()
    torch.manual_seed(seed)
    if name == "EVA02-test":
        import openeva

        _register_tiny_timm_tower()
        cfg = openeva.get_model_spec(name).config
        t = cfg.text
        model = open_clip.CustomTextCLIP(
            embed_dim=cfg.embed_dim,
            vision_cfg=dict(timm_model_name=TINY_TIMM_NAME, timm_pool="token", timm_proj=None,
                            image_size=cfg.vision.img_size[0]),
            text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                          layers=t.layers, mlp_ratio=t.mlp_ratio),
        )
    else:
        model = open_clip.create_model(name, pretrained=None)
    return randomize_(model, seed).train()


def build_openeva(name: str, seed: int) -> torch.nn.Module:
    """openeva's model ``name`` with random O(1) weights (memory workers: the values do not matter)."""
    import openeva

    torch.manual_seed(seed)
    return randomize_(openeva.create_model(name), seed).train()


def make_batch(model_name: str, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import openeva

    spec = openeva.get_model_spec(model_name)
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(batch, 3, *spec.config.vision.img_size, generator=gen)  # (B, 3, H, W)
    captions = [f"a photo of thing number {i} on a {'red' if i % 2 else 'blue'} table" for i in range(batch)]
    tokens = openeva.get_tokenizer(model_name)(captions)  # (B, L)
    return images, tokens


def make_loss(impl: str):
    if impl == "openeva":
        from openeva.losses import ClipLoss

        return ClipLoss()
    import open_clip.loss

    return open_clip.loss.ClipLoss()


def precision_context(precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")


class TrainStep:
    """Forward + loss + backward + AdamW step on a fixed batch; calling it returns the loss."""

    def __init__(self, model, impl: str, precision: str, images, tokens):
        self.model, self.precision, self.images, self.tokens = model, precision, images, tokens
        self.loss_fn = make_loss(impl)
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.losses: list[float] = []

    def __call__(self) -> float:
        with precision_context(self.precision):
            image_features, text_features, logit_scale = self.model(self.images, self.tokens)
            loss = self.loss_fn(image_features, text_features, logit_scale)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())
        return self.losses[-1]


# ------------------------------------------------------------------------------------------- memory worker
def memory_worker(impl: str, model_name: str, precision: str, batch: int, seed: int, threads: int) -> dict:
    """Peak resident memory of ``MEMORY_STEPS`` training steps in this (fresh) process."""
    torch.set_num_threads(threads)
    model = build_openeva(model_name, seed) if impl == "openeva" else build_open_clip(model_name, seed)
    images, tokens = make_batch(model_name, batch, seed)
    step = TrainStep(model, impl, precision, images, tokens)
    gc.collect()
    reset_worked = reset_peak_rss()
    base = rss_bytes()
    times = []
    for _ in range(MEMORY_STEPS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_bytes(reset_worked)
    return {
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "rss_before_steps_mib": round(base / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_above_model_mib": round((peak - base) / 2**20, 1),
        "memory_method": memory_method(reset_worked),
        "step_seconds": [round(t, 3) for t in times],
        "losses": step.losses,
    }


def _memory_rows(args, model_name: str, batch: int) -> list[dict]:
    rows = []
    for precision in args.precisions:
        for impl in IMPLS:
            cmd = python_cmd(__file__, "--worker", impl, "--models", model_name, "--precisions", precision,
                             "--batch", f"{model_name}={batch}", "--seed", str(args.seed),
                             "--threads", str(args.threads))
            result = run_worker(cmd, args.timeout)
            rows.append({"model": model_name, "impl": impl, "precision": precision, "batch": batch, **result})
            print(f"memory {model_name} {impl} {precision}: {result.get('peak_rss_mib')} MiB peak, "
                  f"{result.get('peak_above_model_mib')} MiB above model ({result['status']})",
                  file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ timing
def _timing_rows(args, model_name: str, batch: int, repeats: int) -> tuple[list[dict], dict]:
    theirs = build_open_clip(model_name, args.seed)
    ours = open_clip_to_openeva(theirs, model_name).train()
    models = {"openeva": ours, "open_clip": theirs}
    images, tokens = make_batch(model_name, batch, args.seed)

    with torch.no_grad():  # the same network before any timing: compare normalised features and logit scale
        out = {n: [t.float() for t in m(images, tokens)] for n, m in models.items()}
    agreement = {
        "max_abs_diff_image_features": (out["openeva"][0] - out["open_clip"][0]).abs().max().item(),
        "max_abs_diff_text_features": (out["openeva"][1] - out["open_clip"][1]).abs().max().item(),
        "logit_scale_equal": bool(out["openeva"][2] == out["open_clip"][2]),
    }
    print(f"{model_name} agreement (fp32 forward): {agreement}", file=sys.stderr, flush=True)
    initial = {n: copy.deepcopy(m.state_dict()) for n, m in models.items()}

    rows = []
    for precision in args.precisions:
        for n, m in models.items():
            m.load_state_dict(initial[n])  # every precision starts from the same weights and fresh AdamW state
        steps = {n: TrainStep(m, n, precision, images, tokens) for n, m in models.items()}
        times = interleaved_times(steps, repeats, args.warmup)
        row = {"model": model_name, "precision": precision, "batch": batch, "repeats": repeats, "warmup": args.warmup}
        for n in IMPLS:
            med = median(times[n])
            row[n] = {"step_s_median": round(med, 4), "step_s_all": [round(t, 4) for t in times[n]],
                      "images_per_s": round(batch / med, 3), "first_loss": steps[n].losses[0],
                      "last_loss": steps[n].losses[-1]}
        row["ratio_openeva_over_open_clip"] = round(row["openeva"]["images_per_s"] / row["open_clip"]["images_per_s"], 3)
        row["last_loss_abs_diff"] = abs(row["openeva"]["last_loss"] - row["open_clip"]["last_loss"])
        rows.append(row)
        print(f"time {model_name} {precision} B={batch}: openeva {row['openeva']['images_per_s']:.2f} img/s, "
              f"open_clip {row['open_clip']['images_per_s']:.2f} img/s, ratio {row['ratio_openeva_over_open_clip']}",
              file=sys.stderr, flush=True)
    return rows, agreement


def _kv(text: str, defaults: dict[str, int]) -> dict[str, int]:
    """'A=8,B=64' -> {'A': 8, 'B': 64} over the defaults."""
    out = dict(defaults)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=INT, got {item!r}")
        out[key] = int(value)
    return out


def _tables(timing: list[dict], memory: list[dict]) -> str:
    lines = ["| model | precision | batch | openeva img/s | open_clip img/s | openeva / open_clip |",
             "|---|---|---|---|---|---|"]
    for r in timing:
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['openeva']['images_per_s']:.2f} | "
                     f"{r['open_clip']['images_per_s']:.2f} | {r['ratio_openeva_over_open_clip']:.3f} |")
    lines += ["", "| model | precision | impl | peak RSS (MiB) | above model (MiB) |", "|---|---|---|---|---|"]
    for r in memory:
        if r["status"] == "ok":
            lines.append(f"| {r['model']} | {r['precision']} | {r['impl']} | {r['peak_rss_mib']:.0f} | "
                         f"{r['peak_above_model_mib']:.0f} |")
        else:
            lines.append(f"| {r['model']} | {r['precision']} | {r['impl']} | {r['status']} | {r.get('reason', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="EVA02-B-16,EVA02-test")
    parser.add_argument("--precisions", default="bf16,fp32", help=f"comma-separated subset of {PRECISIONS}")
    parser.add_argument("--batch", default="", help="per-model batch, e.g. EVA02-B-16=8,EVA02-test=64")
    parser.add_argument("--repeats", default="", help="per-model timed steps per implementation, e.g. EVA02-B-16=3")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per memory worker")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", default=str(RESULTS_DIR / "train_step.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    if unknown := sorted(set(args.precisions) - set(PRECISIONS)):
        parser.error(f"unknown --precisions {unknown}; choose from {PRECISIONS}")
    if unknown := sorted(set(args.models) - set(DEFAULT_BATCH)):
        parser.error(f"unknown --models {unknown}; choose from {sorted(DEFAULT_BATCH)}")
    batches, repeats = _kv(args.batch, DEFAULT_BATCH), _kv(args.repeats, DEFAULT_REPEATS)
    torch.set_num_threads(args.threads)

    if args.worker:
        import json

        name = args.models[0]
        print(json.dumps(memory_worker(args.worker, name, args.precisions[0], batches[name], args.seed, args.threads)))
        return {}

    env = environment()
    timing, memory, agreement = [], [], {}
    for name in args.models:
        rows, agreement[name] = _timing_rows(args, name, batches[name], repeats[name])
        timing += rows
        gc.collect()
        if not args.skip_memory:
            memory += _memory_rows(args, name, batches[name])

    report = {
        "benchmark": "train_step",
        "what": "CLIP forward + ClipLoss + backward + AdamW step on a fixed batch",
        "machine": env,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "settings": {
            "precisions": args.precisions, "batch": {n: batches[n] for n in args.models},
            "repeats": {n: repeats[n] for n in args.models}, "warmup": args.warmup, "seed": args.seed,
            "optimizer": f"torch.optim.AdamW(model.parameters(), lr={LR}, weight_decay={WEIGHT_DECAY})",
            "loss": "openeva.losses.ClipLoss() vs open_clip.loss.ClipLoss() (dense, one process)",
            "bf16": "torch.autocast('cpu', dtype=torch.bfloat16) around forward + loss, fp32 weights",
            "timing": "implementations interleaved per step (order alternating), median seconds",
            "memory": f"fresh subprocess per row, VmHWM over {MEMORY_STEPS} steps; 'above model' = peak minus RSS "
                      "once model, optimizer and batch exist",
            "tiny_open_clip": f"CustomTextCLIP, vision timm_model_name={TINY_TIMM_NAME!r} = timm "
                              f"eva02_tiny_patch14_224 with {TINY_TIMM_TOWER}",
        },
        "agreement_fp32_forward": agreement,
        "throughput": timing,
        "memory": memory,
    }
    out = write_json(args.out, report)
    print(_tables(timing, memory))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
