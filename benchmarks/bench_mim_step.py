"""MIM step throughput and memory: EVA-02-B student, EVA02-B-16 CLIP teacher, bf16 autocast.

One training step = teacher forward (frozen, no grad) + student forward/backward on masked images + AdamW step
+ grad clipping, as ``openeva pretrain`` runs it. The teacher forward is also timed alone, to say how much of
the step it costs, in bf16 and fp32 (the reason teachers default to bf16). Random weights (no download),
random images, EVA-02 masks (105 of 256 patches).

    .venv/bin/python benchmarks/bench_mim_step.py --batch-size 8 --steps 3

Writes ``benchmarks/results/mim_step.json`` and prints a markdown table row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from openeva.data.masking import BlockMaskGenerator
from openeva.factory import build_student, build_teacher
from openeva.train.mim_task import MIMTask

from _common import environment, peak_rss_bytes


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="eva02_base_patch14_224")
    p.add_argument("--teacher", default="EVA02-B-16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mim_step.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    teacher = build_teacher(args.teacher, precision="bf16")
    student = build_student(args.student, teacher.target_dim)
    task = MIMTask(student, teacher).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1.5e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    gen = BlockMaskGenerator(student.cfg.grid_size)  # EVA-02: 105 of 256 patches
    B = args.batch_size
    images = torch.randn(B, 3, *student.cfg.img_size, device=device)
    masks = torch.stack([gen() for _ in range(B)]).to(device)  # (B, 16, 16)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731

    def step():
        with autocast():
            loss, _ = task((images, masks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()

    def teacher_forward():
        with autocast():
            task.targets(images)

    for _ in range(args.warmup):
        step()
        teacher_forward()
    step_s = [_timed(step, device) for _ in range(args.steps)]
    teacher_s = [_timed(teacher_forward, device) for _ in range(args.steps)]
    peak_rss = peak_rss_bytes(reset_worked=False) / 2**30  # whole-process high-water mark
    peak_cuda = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    fp32_teacher = build_teacher(args.teacher, precision="fp32").to(device)
    fp32_teacher(images, student.cfg.grid_size)  # warm-up
    teacher_fp32_s = [_timed(lambda: fp32_teacher(images, student.cfg.grid_size), device) for _ in range(args.steps)]

    step_med, teacher_med = statistics.median(step_s), statistics.median(teacher_s)
    machine = environment(args.device)
    result = {
        "benchmark": "mim_step",
        "student": args.student,
        "teacher": args.teacher,
        "student_params_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 1),
        "teacher_params_m": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 1),
        "machine": machine,
        "device": machine["device"],
        "threads": machine["threads"],
        "torch": machine["torch"],
        "precision": "bf16 autocast (teacher weights bf16)",
        "batch_size": B,
        "img_size": list(student.cfg.img_size),
        "masked_patches": gen.num_masking_patches,
        "steps": args.steps,
        "step_s_median": round(step_med, 3),
        "step_s_all": [round(s, 3) for s in step_s],
        "images_per_s": round(B / step_med, 2),
        "teacher_forward_s_median": round(teacher_med, 3),
        "teacher_fraction_of_step": round(teacher_med / step_med, 3),
        "teacher_fp32_forward_s_median": round(statistics.median(teacher_fp32_s), 3),
        "peak_rss_gib": round(peak_rss, 2),
        "peak_cuda_gib": round(peak_cuda, 2) if peak_cuda is not None else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\n| student / teacher | device | batch | step (s) | img/s | teacher fwd bf16 (s) | teacher share | "
          "teacher fwd fp32 (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.student} / {args.teacher} | {result['device']} ({result['threads']} threads) | {B} | "
          f"{step_med:.2f} | {B / step_med:.2f} | {teacher_med:.2f} | {teacher_med / step_med:.0%} | "
          f"{result['teacher_fp32_forward_s_median']:.2f} | {peak_rss:.2f} |")
    return result


if __name__ == "__main__":
    main()
