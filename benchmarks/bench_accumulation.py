"""The CLIP step with gradient accumulation: openeva's (GradCache, ``openeva.train.accumulate``) against open_clip's
``--accum-freq`` (``open_clip_train.train.train_one_epoch``, called as open_clip's trainer calls it).

Both take the same tiny CLIP (``EVA02-test`` sizes, built as open_clip builds its EVA models; its weights
converted into openeva's model, as benchmarks/bench_train_step.py does), the same ``accum`` micro-batches of
random images and captions per step, the same loss definition (the contrastive loss of the whole step's
``accum x micro`` samples: ``openeva.losses.ClipLoss`` vs ``open_clip.loss.ClipLoss``), AdamW (lr 1e-4, wd 0.05),
fp32, one process:

* openeva: ``CLIPTask`` + :func:`openeva.train.accumulate.cached_accumulation` (what the engine runs for
  ``optim.accum_steps > 1``): cache every micro-batch's features without a graph, the loss of the step and its
  gradient with respect to the features once, then each micro-batch's forward again and a backward of the cached
  gradient; then AdamW and the logit-scale clamp.
* open_clip: ``train_one_epoch`` over an epoch of ``accum`` batches = one optimizer step (args from open_clip's
  own ``parse_args``, ``--accum-freq accum``): cache features without a graph, then for each micro-batch a forward
  and the *whole* loss recomputed with that micro-batch's live features, backward each time.

Checks: the step's loss (open_clip logs its last re-computed loss; openeva's loss of the step) from the same
weights, and every parameter's gradient after one step. Measured: median seconds per optimizer step (the two
interleaved in one process, order alternating, after a warm-up), and peak resident memory above the model in a
fresh process per implementation (VmHWM over 2 steps).

    .venv/bin/python benchmarks/bench_accumulation.py --threads 2

Writes ``benchmarks/results/accumulation.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys

import torch

from _common import (
    RESULTS_DIR, environment, interleaved_times, median, memory_method, open_clip_to_openeva, peak_rss_bytes,
    python_cmd, reset_peak_rss, rss_bytes, run_worker, write_json,
)
from bench_train_step import build_open_clip, make_batch

MODEL = "EVA02-test"
IMPLS = ("openeva", "open_clip")
LR, WEIGHT_DECAY = 1e-4, 0.05


def micro_batches(accum: int, micro: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, tokens = make_batch(MODEL, accum * micro, seed)  # (accum * micro, 3, H, W), (accum * micro, L)
    return [(images[i * micro:(i + 1) * micro], tokens[i * micro:(i + 1) * micro]) for i in range(accum)]


class OpeneVAStep:
    """One optimizer step as the engine runs it with ``optim.accum_steps = accum`` (fp32, one process)."""

    def __init__(self, model, batches):
        from openeva.runtime import Precision
        from openeva.train.clip_task import CLIPTask

        self.task = CLIPTask(model)
        self.task.set_world(0, 1)
        self.task.train()
        self.batches = [(b, {}) for b in batches]
        self.precision = Precision("fp32", torch.device("cpu"))
        self.opt = torch.optim.AdamW(self.task.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.losses: list[float] = []

    def __call__(self) -> float:
        from openeva.train.accumulate import cached_accumulation

        self.opt.zero_grad(set_to_none=True)
        sums = cached_accumulation(self.task, self.task, self.batches, self.precision, torch.device("cpu"))
        self.opt.step()
        self.task.on_step_end(0)
        self.losses.append(float(sums["loss"]))
        return self.losses[-1]


class _Loader(list):
    """The shape of open_clip's DataInfo.dataloader: an iterable of (images, texts) with counts."""

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        return sum(len(b[0]) for b in self)


class _Data:
    def __init__(self, batches):
        self.dataloader = _Loader(batches)

    def set_epoch(self, epoch: int) -> None:
        pass


class _LastLoss(logging.Handler):
    """open_clip logs the step's loss at the end of an epoch ("Loss: 4.1234 (...)"): kept as the step's loss."""

    def __init__(self):
        super().__init__()
        self.values: list[float] = []

    def emit(self, record):
        text = record.getMessage()
        if "Loss: " in text:
            self.values.append(float(text.split("Loss: ", 1)[1].split()[0]))


class OpenClipStep:
    """One optimizer step = ``train_one_epoch`` over ``accum`` batches with ``--accum-freq accum``."""

    def __init__(self, model, batches):
        import open_clip.loss
        from open_clip_train.params import parse_args

        model.output_dict = True  # open_clip's trainer reads the model's outputs by name
        self.model, self.data = model, _Data(batches)
        self.args = parse_args(["--accum-freq", str(len(batches)), "--batch-size", str(len(batches[0][0])),
                                "--precision", "fp32", "--skip-scheduler", "--log-every-n-steps", "1000000"])
        self.args.device, self.args.rank, self.args.local_rank, self.args.world_size = "cpu", 0, 0, 1
        self.args.distill, self.args.wandb, self.args.horovod = False, False, False
        self.loss = open_clip.loss.ClipLoss()
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.log = _LastLoss()
        root = logging.getLogger()
        root.addHandler(self.log)
        root.setLevel(logging.INFO)

    @property
    def losses(self) -> list[float]:
        return self.log.values

    def __call__(self) -> float:
        from open_clip_train.train import train_one_epoch

        train_one_epoch(self.model, {"train": self.data}, self.loss, 0, self.opt, None, None, None, self.args)
        return self.losses[-1]


def build(impl: str, seed: int, batches):
    """The same weights for both: open_clip's model, converted into openeva's for the openeva step."""
    ref = build_open_clip(MODEL, seed)
    if impl == "open_clip":
        return OpenClipStep(ref, batches)
    return OpeneVAStep(open_clip_to_openeva(ref, MODEL).train(), batches)


def compare_one_step(accum: int, micro: int, seed: int) -> dict:
    """The first step's loss and every gradient, from the same weights."""
    batches = micro_batches(accum, micro, seed)
    ours, theirs = build("openeva", seed, batches), build("open_clip", seed, batches)
    ours(), theirs()
    from openeva.checkpoints import detect_format, to_openeva

    ref_grads = {k: v for k, v in theirs.model.named_parameters()}
    names = to_openeva({k: p.grad for k, p in ref_grads.items()}, detect_format(dict(ref_grads)), is_clip=True)
    diffs = {}
    for name, p in ours.task.model.named_parameters():
        g_ref = names[name]
        diffs[name] = float((p.grad - g_ref).abs().max() / g_ref.abs().max().clamp(min=1e-30))
    scale_ratio = float(ref_grads["logit_scale"].grad / ours.task.model.logit_scale.grad)
    others = {k: v for k, v in diffs.items() if k != "logit_scale"}
    return {"loss_openeva": ours.losses[0], "loss_open_clip": theirs.losses[0],
            "max_relative_grad_diff_except_logit_scale": max(others.values()),
            "logit_scale_grad_ratio_open_clip_over_openeva": scale_ratio}


def memory_worker(impl: str, accum: int, micro: int, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    step = build(impl, seed, micro_batches(accum, micro, seed))
    gc.collect()
    reset_worked = reset_peak_rss()
    base = rss_bytes()
    step(), step()
    peak = peak_rss_bytes(reset_worked)
    return {"peak_rss_mib": round(peak / 2**20, 1), "peak_above_model_mib": round((peak - base) / 2**20, 1),
            "memory_method": memory_method(reset_worked), "losses": step.losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", choices=IMPLS)
    parser.add_argument("--out", default=str(RESULTS_DIR / "accumulation.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.accum, args.micro, args.seed, args.threads)))
        return
    torch.set_num_threads(args.threads)
    check = compare_one_step(args.accum, args.micro, args.seed)
    batches = micro_batches(args.accum, args.micro, args.seed)
    steps = {impl: build(impl, args.seed, batches) for impl in IMPLS}
    times = interleaved_times(steps, args.repeats)
    memory = {}
    for impl in IMPLS:
        cmd = python_cmd(__file__, "--worker", impl, "--accum", str(args.accum), "--micro", str(args.micro),
                         "--seed", str(args.seed), "--threads", str(args.threads))
        memory[impl] = run_worker(cmd, args.timeout)
    report = {
        "benchmark": "accumulation",
        "model": MODEL, "accum": args.accum, "micro_batch": args.micro, "global_batch": args.accum * args.micro,
        "precision": "fp32", "threads": args.threads, "repeats": args.repeats,
        "same_weights_one_step": check,
        "step_seconds_median": {impl: round(median(t), 4) for impl, t in times.items()},
        "step_seconds": {impl: [round(x, 4) for x in t] for impl, t in times.items()},
        "memory": memory,
        "note": ("one process on a shared, loaded 2-core machine: timings are noisy (interleaved, median). "
                 "open_clip recomputes the whole step's loss accum times (once per micro-batch backward) and adds "
                 "the logit scale's gradient accum times; openeva computes the loss once and gives the logit scale "
                 "the step's gradient once (see logit_scale_grad_ratio_open_clip_over_openeva)."),
        "environment": environment(),
    }
    out = write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("same_weights_one_step", "step_seconds_median")}, indent=1))
    print(f"memory: { {k: v.get('peak_above_model_mib') for k, v in memory.items()} } MiB above the model",
          file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
