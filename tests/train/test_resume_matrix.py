"""Sharded checkpoints (torch.distributed.checkpoint) resume under another world size and another strategy.

One run is cut into five legs, each resumed from the previous leg's checkpoint: 1 process -> 2 processes (DDP)
-> 2 (FSDP) -> 2 (DDP) -> 1 process, covering 1->2, DDP->FSDP, FSDP->DDP and 2->1. The global batch stays 16,
the data is map-style with per-sample seeds and the model draws no random numbers, so the resumed run follows
the uninterrupted run's loss trajectory and ends with its weights (fp32, float tolerance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openeva.configs import CONFIG_DIR
from openeva.train.config import load_config
from openeva.train.runner import train

COMMON = ["precision=fp32", "schedule.total_steps=5", "schedule.warmup_steps=1", "eval_every=0", "log_every=1",
          "progress=false", "tensorboard=false", "plot=false", "data.val=None", "data.zeroshot=None",
          "data.train_num_samples=64", "save_every=100"]


def _one(tmp_path: Path, name: str, *overrides: str) -> None:
    train(load_config(CONFIG_DIR / "clip_tiny.py",
                      [f"output_dir={tmp_path}", f"name={name}", "data.batch_size=16", *COMMON, *overrides]))


def _two(tmp_path: Path, name: str, strategy: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openeva",
           "train", "clip_tiny", f"name={name}", f"output_dir={tmp_path}", "data.batch_size=8",
           f"dist.strategy={strategy}", "dist.timeout_s=120", *COMMON, *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("split", "train") == "train"}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_resume_across_world_sizes_and_strategies(tmp_path):
    _one(tmp_path, "full")
    leg = ["resume=latest", "max_steps_this_run=1"]
    _one(tmp_path, "cut", "max_steps_this_run=1")
    _two(tmp_path, "cut", "ddp", *leg)  # 1 -> 2
    _two(tmp_path, "cut", "fsdp", *leg)  # DDP -> FSDP
    _two(tmp_path, "cut", "ddp", *leg)  # FSDP -> DDP
    _one(tmp_path, "cut", "resume=latest")  # 2 -> 1
    full, cut = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(cut) == sorted(full) == [1, 2, 3, 4, 5]
    assert full[1] != full[5]
    for step in full:
        assert cut[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5), step
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "step_0000005" / "train_state.pt", weights_only=True)
    assert state["counters"]["samples"] == 5 * 16  # run-wide totals carried across world sizes
