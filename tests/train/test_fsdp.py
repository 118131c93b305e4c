"""FSDP2 as current practice (2 gloo processes): trained transformer blocks are their own units, frozen modules
(a teacher, an EMA copy) and 0-dim parameters stay whole outside the sharded root, bf16 runs all-gather and compute
in bf16 (``MixedPrecisionPolicy``); and a 2-process FSDP run of each task evaluates and writes its final model.

The wrapping check runs as a script (``python test_fsdp.py RANK STORE OUT``), as tests/losses/test_distributed.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

WORLD_SIZE = 2


class _Distill(nn.Module):
    """A Task's shape: a trained student, a frozen teacher and a 0-dim parameter under one root."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student, self.teacher = student, copy.deepcopy(student).requires_grad_(False)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        with torch.no_grad():
            target = self.teacher(x).float()  # (B, C)
        return ((self.student(x).float() * self.scale - target) ** 2).mean()


def _run_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from openeva import create_model
    from openeva.train.distributed import World, wrap_task

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        task = _Distill(create_model("eva02_test_patch8_32", num_classes=4))
        seen = {}
        for name in ("student", "teacher"):
            linear = getattr(task, name).blocks[0].attn.proj
            linear.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, m.weight.dtype))
        wrap_task(task, World(rank, WORLD_SIZE), "fsdp", param_dtype=torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the engine runs a bf16 step
            loss = task(torch.randn(2, 3, 32, 32))
        loss.backward()
        result = {
            "block_sharded": all(isinstance(p, DTensor) for p in task.student.blocks[0].parameters()),
            "root_sharded": isinstance(task.student.patch_embed.proj.weight, DTensor),
            "teacher_whole": not any(isinstance(p, DTensor) for p in task.teacher.parameters()),
            "scale_whole": not isinstance(task.scale, DTensor),
            "student_compute": str(seen["student"]), "teacher_compute": str(seen["teacher"]),
            "grad_dtype": str(task.student.blocks[0].attn.proj.weight.grad.dtype),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # both ranks done with backward's reduce-scatters before either tears gloo down
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path) -> list[dict]:
    from gloo_ranks import run_ranks  # here, not at the top: the ranks run this file as a script

    run_ranks(__file__, WORLD_SIZE, tmp_path)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_fsdp_wrapping_places_frozen_modules_outside_and_computes_in_bf16(tmp_path):
    for r in _spawn(tmp_path):
        assert r["block_sharded"] and r["root_sharded"] and r["teacher_whole"] and r["scale_whole"]
        assert r["student_compute"] == "torch.bfloat16"  # MixedPrecisionPolicy(param_dtype=bf16)
        assert r["teacher_compute"] == "torch.float32"  # a replica, untouched by the policy
        assert r["grad_dtype"] == "torch.float32"  # sharded gradients reduced and kept in fp32


RUNS = {  # evaluation on: it calls encode_image / forward_features / a Task's encode, not the root's forward
    "clip": ["clip_tiny", "precision=bf16", "data.train_num_samples=32", "optim.accum_steps=2",
             "data.zeroshot=shapes", "data.zeroshot_num_samples=8"],
    "mim": ["mim_tiny", "precision=fp32", "data.synthetic_num_samples=32"],
    "finetune": ["finetune_tiny", "precision=fp32", "data.synthetic_num_samples=32"],  # with its EMA copy
}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("task", sorted(RUNS))
def test_two_process_fsdp_run_evaluates_and_saves(tmp_path, task):
    """Validation data on every rank, evaluated through the sharded model at step 1 and at the end, then the final
    model (a hang fails within dist.timeout_s)."""
    config, *overrides = RUNS[task]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openeva",
           "train", config, "name=run", f"output_dir={tmp_path}", "dist.strategy=fsdp", "dist.timeout_s=120",
           "schedule.total_steps=2", "schedule.epochs=None", "schedule.warmup_steps=0", "eval_every=1",
           "data.batch_size=4", "data.val_num_samples=8", "log_every=1", "progress=false", "tensorboard=false",
           "plot=false", *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split", "train") == "train"] == [1, 2]
    assert [r["step"] for r in rows if r.get("split") == "val"] == [1, 2]


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
