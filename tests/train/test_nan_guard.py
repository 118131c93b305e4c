"""The NaN guard (openeva.train.nan_guard): a poisoned sample's non-finite loss restores the last checkpoint, its
data window is skipped and the run continues to a finite end; a loss that keeps going non-finite stops the run
after ``nan_max_retries`` restores. Both are logged in metrics.jsonl."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from openeva.train.config import OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.data import ResumableLoader
from openeva.train.engine import Trainer
from openeva.train.task import ParamGroupSpec, Task

POISON = 21  # the dataset position whose input is NaN


class _Regression(Task):
    """A linear regression; from ``nan_from`` optimizer steps on (counted in this process, never restored) every
    loss is NaN: a fault that a restore does not cure."""

    def __init__(self, nan_from: int | None = None):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.nan_from, self.steps_done, self.seen = nan_from, 0, []

    def forward(self, batch):
        x, y, index = batch
        self.seen.append(index.tolist())
        loss = ((self.net(x).squeeze(-1) - y) ** 2).mean()
        if self.nan_from is not None and self.steps_done >= self.nan_from:
            loss = loss * float("nan")
        return loss, {}

    def param_group_specs(self):
        return [ParamGroupSpec(self.net, "net")]

    def on_step_end(self, step):
        self.steps_done += 1


def _data(poison: bool) -> torch.utils.data.Dataset:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    if poison:
        x[POISON] = float("nan")
    return torch.utils.data.TensorDataset(x, torch.nan_to_num(x) @ torch.arange(4.0), torch.arange(64))


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path), name="run", progress=False, tensorboard=False, plot=False,
                       log_every=2, save_every=2, schedule=ScheduleConfig(total_steps=6, warmup_steps=0),
                       optim=OptimConfig(lr=0.1, weight_decay=0.0), **kw)


def _rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_a_poisoned_sample_restores_the_checkpoint_skips_its_window_and_continues(tmp_path):
    task = _Regression()
    loader = ResumableLoader(_data(poison=True), 8, seed=0)  # 8 batches an epoch: 6 steps stay in epoch 0
    bad_batch = next(i for i, b in enumerate(loader.batches(0, 0)) if POISON in b[2].tolist())
    assert bad_batch >= 2  # so that a checkpoint (step 2) comes before it; the seed fixes the order
    out = Trainer(_cfg(tmp_path), task, loader, run_dir=tmp_path / "run").fit()

    assert out["step"] == 6
    rows = _rows(tmp_path)
    events = [r for r in rows if r["split"] == "nan_guard"]
    restore, skip = events[0], events[1]
    assert restore["nonfinite_step"] == bad_batch + 1 and restore["window"] == bad_batch
    assert restore["retry"] == 1 and restore["stopped"] == 0
    assert restore["restored_step"] == 2 * (bad_batch // 2)  # the newest checkpoint before the NaN
    assert skip["skipped_window"] == bad_batch and len(events) == 2
    losses = {r["step"]: r["loss"] for r in rows if r["split"] == "train"}  # the later rows win
    assert sorted(losses) == [2, 4, 6] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert all(torch.isfinite(p).all() for p in task.parameters())
    # after the restore, the poisoned sample's batch was never trained on again
    after = task.seen[next(i for i, b in enumerate(task.seen) if POISON in b) + 1:]
    assert after and not any(POISON in b for b in after)
    # the skipped window is kept in the checkpoints: a resume or a later restore skips it again
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000006" / "train_state.pt", weights_only=True)
    assert state["nan_guard"]["skip"] == [bad_batch]


def test_a_fault_that_comes_back_stops_after_nan_max_retries(tmp_path):
    task = _Regression(nan_from=3)
    with pytest.raises(FloatingPointError, match="nan_max_retries=2"):
        Trainer(_cfg(tmp_path, nan_max_retries=2), task, ResumableLoader(_data(poison=False), 8, seed=0),
                run_dir=tmp_path / "run").fit()
    events = [r for r in _rows(tmp_path) if r["split"] == "nan_guard" and "retry" in r]
    assert [e["retry"] for e in events] == [1, 2, 3]
    assert [e["stopped"] for e in events] == [0, 0, 1]


def test_no_checkpoint_to_restore_is_a_clear_stop(tmp_path):
    task = _Regression(nan_from=0)
    with pytest.raises(FloatingPointError, match="no checkpoint"):
        Trainer(_cfg(tmp_path), task, ResumableLoader(_data(poison=False), 8, seed=0), run_dir=tmp_path / "run").fit()


def test_nan_max_retries_is_validated():
    with pytest.raises(ValueError, match="nan_max_retries"):
        TrainConfig(nan_max_retries=-1, schedule=ScheduleConfig(total_steps=6, warmup_steps=0))
