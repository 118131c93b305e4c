"""Two processes (torchrun, gloo) and one process with the same global batch follow the same loss trajectory
and end with the same weights: data sharding, per-sample augmentation seeds, the gathered contrastive loss
and DDP gradient averaging together make the global step independent of the process count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

# fp32: the equivalence is exact arithmetic up to summation order; "auto" would pick bf16 on CPUs with native bf16,
# whose rounding depends on the batch shape and hides what this test checks.
COMMON = ["precision=fp32", "schedule.total_steps=5", "schedule.warmup_steps=1", "eval_every=0", "log_every=1", "progress=false",
          "tensorboard=false", "plot=false", "data.val=None", "data.zeroshot=None", "data.train_num_samples=256"]


def _run(cmd: list[str], tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and r.get("split", "train") == "train"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    out = [f"output_dir={tmp_path}"]
    _run([sys.executable, "-m", "openeva", "train", "clip_tiny", "name=one", "data.batch_size=16", *COMMON, *out],
         tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openeva",
          "train", "clip_tiny", "name=two", "data.batch_size=8", *COMMON, *out], tmp_path)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    assert one[0] != one[-1]  # the run trained: a trajectory, not a constant
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    w1 = load_file(tmp_path / "one" / "final" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=k)  # Adam amplifies float-order noise
