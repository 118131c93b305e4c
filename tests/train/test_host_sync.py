"""A training step that does not log reads nothing back to the host: no ``.item()`` / ``bool(tensor)``
(``aten::_local_scalar_dense``) and no data-dependent shapes (``aten::nonzero``, ``masked_select``), counted with a
TorchDispatchMode and the profiler over the engine's batch hand-off and one optimizer step of CLIP (with and
without cached accumulation), MIM (dense mask-weighted loss), fine-tuning (with EMA and mixup) and segmentation,
each with a padded batch.

Excluded, by design: the optimizer's step counter, a CPU tensor that torch.optim reads on the host (no device
sync on CUDA), and fp16's grad scaler (it must read its overflow flag; these runs are fp32)."""

from __future__ import annotations

import traceback

import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from openeva.configs import CONFIG_DIR
from openeva.train.config import load_config
from openeva.train.distributed import World
from openeva.train.engine import Trainer, seed_all
from openeva.train.runner import preflight

SYNCS = {torch.ops.aten._local_scalar_dense.default}
SHAPE_SYNCS = ("aten::nonzero", "aten::masked_select")  # also called inside kernels (boolean indexing): profiled
QUIET = ["progress=false", "tensorboard=false", "plot=false", "precision=fp32", "eval_every=0", "log_every=1000",
         "data.val=none"]


class _ScalarReads(TorchDispatchMode):
    """Records every read of a tensor's value on the host, with where it was called from."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            stack = traceback.extract_stack()
            if not any("/torch/optim/" in frame.filename for frame in stack):  # the CPU step counter
                caller = next((f for f in reversed(stack) if "/openeva/" in f.filename), stack[-2])
                self.calls.append(f"{func} at {caller.filename}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads():
    """-> a list that fills with the host reads of the block (scalar reads with their caller, shape syncs)."""
    calls: list[str] = []
    with profile(activities=[ProfilerActivity.CPU]) as prof, _ScalarReads() as scalars:
        yield calls
    calls.extend(scalars.calls)
    calls.extend(f"{e.key} x{e.count}" for e in prof.key_averages() if e.key in SHAPE_SYNCS)


def _trainer(tmp_path, config: str, *overrides: str) -> Trainer:
    cfg = load_config(CONFIG_DIR / config, [f"output_dir={tmp_path}", *QUIET, *overrides])
    entry = preflight(cfg)
    seed_all(cfg.seed)
    task, data = entry.build(cfg, World())
    return Trainer(cfg, task, data, World(), tmp_path / "run")


def _host_reads_of_one_step(trainer: Trainer, short_last: bool = False) -> list[str]:
    stream = trainer._stream()
    cpu = [next(stream) for _ in range(trainer.accum)]  # decoding and augmentation are host work: read first
    if short_last:  # a skipped sample: the batch arrives one row short and is padded back to its shape
        last = cpu[-1]
        cpu[-1] = type(last)([c[:-1] for c in last], 1)
    trainer.train_step([trainer._next_batch(iter(cpu)) for _ in range(trainer.accum)])  # warm-up (lazy inits)
    cpu_iter = iter(cpu)
    with host_reads() as calls:
        batches = [trainer._next_batch(cpu_iter) for _ in range(trainer.accum)]
        trainer.train_step(batches)
        trainer.task.on_step_end(2)
    batch, valid = batches[-1]
    if short_last:  # padded back to the loader's shape, the padding row marked invalid
        assert len(batch[0]) == trainer.data.batch_size and valid is not None
        assert valid.tolist() == [True] * (len(batch[0]) - 1) + [False]
    return calls


@pytest.mark.parametrize("accum", [1, 2])
def test_clip_step_reads_nothing_back(tmp_path, accum):
    trainer = _trainer(tmp_path, "clip_tiny.py", "data.batch_size=8", "data.train_num_samples=64",
                       f"optim.accum_steps={accum}")
    assert _host_reads_of_one_step(trainer, short_last=True) == []


def test_finetune_step_reads_nothing_back(tmp_path):
    trainer = _trainer(tmp_path, "finetune_tiny.py", "data.batch_size=8", "data.synthetic_num_samples=64",
                       "task_options.mixup=0.8")
    assert trainer.task.ema is not None
    assert _host_reads_of_one_step(trainer, short_last=True) == []


def test_mim_step_reads_nothing_back(tmp_path):
    trainer = _trainer(tmp_path, "mim_tiny.py", "data.batch_size=8", "data.synthetic_num_samples=64")
    assert _host_reads_of_one_step(trainer, short_last=True) == []


def test_segmentation_step_reads_nothing_back(tmp_path):
    trainer = _trainer(tmp_path, "segment_tiny.py", "data.batch_size=8", "data.synthetic_num_samples=64")
    assert _host_reads_of_one_step(trainer, short_last=True) == []


def test_the_counter_sees_a_host_read(tmp_path):
    with host_reads() as calls:
        torch.ones(3).sum().item()
        torch.arange(4)[torch.arange(4) > 1]
    assert len(calls) == 2 and "aten::nonzero x1" in calls
