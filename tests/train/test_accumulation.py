"""Exact contrastive accumulation (GradCache): a step of ``batch x accum x processes`` samples trains as one batch
of that size would, with the plain, tiled and SigLIP losses: same first loss, same weights after 3 steps (fp32,
float tolerance). Averaging per-micro-batch losses (the former behaviour) gives another loss (3.38 vs 2.65)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from openeva.configs import CONFIG_DIR
from openeva.losses import ClipLoss
from openeva.runtime import Precision
from openeva.train.accumulate import cached_accumulation
from openeva.train.config import load_config
from openeva.train.runner import train
from openeva.train.task import Task

COMMON = ["precision=fp32", "schedule.total_steps=3", "schedule.warmup_steps=1", "eval_every=0", "log_every=1",
          "progress=false", "tensorboard=false", "plot=false", "data.val=None", "data.zeroshot=None",
          "data.train_num_samples=64"]
LOSSES = {"clip": [], "tiled": ["loss.tiled=true"], "siglip": ["loss.kind=siglip"]}


def _run_here(tmp_path: Path, name: str, *overrides: str) -> Path:
    train(load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", f"name={name}", *COMMON, *overrides]))
    return tmp_path / name


def _run_procs(tmp_path: Path, nproc: int, name: str, *overrides: str) -> Path:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
           "openeva", "train", "clip_tiny", f"name={name}", f"output_dir={tmp_path}", *COMMON, *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split", "train") == "train"]


def _assert_same_run(run: Path, ref: Path) -> None:
    a, b = _losses(run), _losses(ref)
    assert len(a) == len(b) == 3
    assert a[0] == pytest.approx(b[0], rel=1e-5)  # the first step: same weights, same samples, one loss
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    wa, wb = load_file(run / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4, msg=k)  # Adam amplifies float-order noise


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_accumulated_step_equals_the_large_batch(tmp_path, loss):
    ref = _run_here(tmp_path, "batch16", "data.batch_size=16", *LOSSES[loss])
    acc = _run_here(tmp_path, "batch8x2", "data.batch_size=8", "optim.accum_steps=2", *LOSSES[loss])
    _assert_same_run(acc, ref)
    if loss == "clip":  # the micro-batch's negatives only: a visibly different objective
        small = _run_here(tmp_path, "batch8", "data.batch_size=8")
        assert abs(_losses(small)[0] - _losses(ref)[0]) > 0.1


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize(("nproc", "loss"), [(2, "tiled"), (4, "siglip")])
def test_processes_with_accumulation_equal_the_large_batch(tmp_path, nproc, loss):
    """2 processes x 4 x accum 2 (4 x 2 x 2) == one batch of 16: every rank's loss sees the whole step."""
    ref = _run_here(tmp_path, "batch16", "data.batch_size=16", *LOSSES[loss])
    run = _run_procs(tmp_path, nproc, "procs", f"data.batch_size={16 // nproc // 2}", "optim.accum_steps=2",
                     *LOSSES[loss])
    _assert_same_run(run, ref)


class _TwoTowers(Task):
    """A CLIP-shaped Task on vectors: two linear towers and a learned logit scale."""

    accumulate_features = True

    def __init__(self):
        super().__init__()
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.loss_fn = ClipLoss()

    def forward(self, batch, features_only: bool = False, valid=None):
        features = {"image": F.normalize(self.image(batch[0]).float(), dim=-1),
                    "text": F.normalize(self.text(batch[1]).float(), dim=-1), "scale": self.logit_scale.exp()}
        return features if features_only else self.loss_from_features(features)

    def loss_from_features(self, features):
        return self.loss_fn(features["image"], features["text"], features["scale"]), {}

    def param_group_specs(self):
        return []


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cached_accumulation_gives_the_large_batch_gradient(precision):
    """Each parameter's gradient equals the one of the whole batch in one forward; under fp16 the features'
    gradients come from the scaled loss and are not scaled again (Adam would hide a wrong scale in the weights)."""
    torch.manual_seed(0)
    task, images, texts = _TwoTowers(), torch.randn(8, 6), torch.randn(8, 5)
    task((images, texts))[0].backward()
    ref = {n: p.grad.clone() for n, p in task.named_parameters()}
    task.zero_grad()
    prec = Precision(precision, torch.device("cpu"))
    if prec.scaler is not None:  # a scale these gradients do not overflow at (the scaler would skip the step)
        prec.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    micro = [((images[i:i + 2], texts[i:i + 2]), {}) for i in range(0, 8, 2)]
    out = cached_accumulation(task, task, micro, prec, torch.device("cpu"))
    scale = prec.scaler.get_scale() if prec.scaler is not None else 1.0
    tol = dict(rtol=1e-5, atol=1e-6) if precision == "fp32" else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(out["loss"], task((images, texts))[0].detach(), **tol)
    for n, p in task.named_parameters():
        torch.testing.assert_close(p.grad / scale, ref[n], msg=n, **tol)


def test_a_task_that_accumulates_features_must_define_their_loss():
    from openeva.train.task import Task

    with pytest.raises(TypeError, match="defines no loss_from_features"):
        class Incomplete(Task):  # noqa: F841 (the definition itself is refused)
            accumulate_features = True

            def forward(self, batch):
                return torch.zeros(()), {}

            def param_group_specs(self):
                return []
