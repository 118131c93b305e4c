"""Training checkpoints: sharded, atomic, pruned to the last N, and complete enough to resume bit-for-bit.

Layout of ``RUN/checkpoints/step_0000100/``: ``dcp/`` (the Task's state and the optimizer's, keyed by parameter
name, written by every rank with ``torch.distributed.checkpoint``: under FSDP each rank writes its shards, under
DDP the replicated tensors are split among the ranks), ``model.safetensors`` + ``config.json`` (the trained model
in openeva's format, so ``openeva.create_model(step_dir)`` loads it; the config also holds the resolved run
config), ``train_state.pt`` (schedule, grad scaler, data position, run-wide counters) and ``rng_rank{r}.pt``
(every process's RNG states). Because the state is keyed by name and DCP reshards on load, a checkpoint resumes
under another strategy (DDP <-> FSDP) and another number of processes. A checkpoint is written into a hidden
temporary directory and renamed into place when complete; ``RUN/checkpoints/latest`` (a one-line text file,
replaced atomically) is updated only after that, so it never names a half-written checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from openeva.checkpoints.io import save_weights
from openeva.runtime import atomic_write_text

logger = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"
SHARDED = "dcp"  # torch.distributed.checkpoint directory of a step
LATEST = "latest"


def step_dirname(step: int) -> str:
    return f"step_{step:07d}"


def export_target(task: nn.Module) -> tuple[str, nn.Module] | None:
    """The model a Task trains, as ``(attribute path, module)``: ``task.export_model()`` if defined, else the
    first of ``model`` / ``student`` that carries a registry spec (what ``save_model`` needs)."""
    fn = getattr(task, "export_model", None)
    module = fn() if callable(fn) else None
    if module is None:
        for name in ("model", "student"):
            candidate = getattr(task, name, None)
            if isinstance(candidate, nn.Module) and getattr(candidate, "spec", None) is not None:
                module = candidate
                break
    if module is None:
        return None
    for path, m in task.named_modules():
        if m is module and path:
            return path, module
    return None


def rng_state() -> dict:
    """Every RNG a training step can touch, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_model_dir(out: Path, weights: dict[str, torch.Tensor], config: dict) -> None:
    """``model.safetensors`` + ``config.json`` in openeva's format (as ``openeva.save_model`` writes them)."""
    save_weights(weights, out, config)


def split_task_state(task_state: dict[str, torch.Tensor], prefix: str | None):
    """Task state dict -> (exported model's weights without prefix, the rest of the Task's state)."""
    if prefix is None:
        return {}, dict(task_state)
    p = prefix + "."
    model = {k[len(p):]: v for k, v in task_state.items() if k.startswith(p)}
    rest = {k: v for k, v in task_state.items() if not k.startswith(p)}
    return model, rest


class CheckpointManager:
    """Writes, lists, prunes and finds checkpoints under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def tmp_dir(self, step: int) -> Path:
        return self.root / f".tmp_{step_dirname(step)}"

    def prepare(self, step: int) -> Path:
        """Rank 0: a fresh temporary directory for ``step`` (a stale one from a crash is removed)."""
        tmp = self.tmp_dir(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, step: int) -> Path:
        """Rank 0, after every process wrote its part: rename into place, point ``latest`` at it, prune."""
        tmp, final = self.tmp_dir(step), self.root / step_dirname(step)
        if final.exists():  # re-saving a step (a resumed run that stopped at the same step)
            old = self.root / f".old_{step_dirname(step)}"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        atomic_write_text(self.root / LATEST, final.name + "\n")
        self.prune()
        return final

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_")
                and (p / TRAIN_STATE).is_file()]
        return sorted(dirs, key=lambda p: p.name)

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        old = self.root / f".old_{path.name}"
        if not path.exists() and (old / TRAIN_STATE).is_file():
            old.rename(path)  # killed while re-saving this step (commit): the previous copy is still whole
        if not (path / TRAIN_STATE).is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
        return path

    def prune(self) -> None:
        keep = self.latest()
        for path in self.list()[:-self.keep_last]:
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    def resolve(self, resume: str | None) -> Path | None:
        """``resume`` -> a checkpoint directory: ``latest`` (None when the run has none yet: a fresh start), or
        a path to a step directory."""
        if resume is None:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not (path / TRAIN_STATE).is_file():
            raise FileNotFoundError(f"resume={resume!r} is not a training checkpoint directory (no {TRAIN_STATE})")
        return path


def save_sharded(step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank: write the (wrapped) model's and the optimizer's state into ``step_dir/dcp``, keyed by name
    (``get_state_dict``: DTensor shards under FSDP, no ``module.`` prefix under DDP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(step_dir / SHARDED))


def load_sharded(step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank: read ``step_dir/dcp`` into the (wrapped) model and the optimizer, whatever the strategy and
    number of processes that wrote it (each rank reads only the slices its own tensors hold)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # the layout to fill (creates optimizer state)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(step_dir / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def sharded_keys(step_dir: Path, part: str = "model") -> set[str]:
    """The names stored under ``part`` ("model" or "optim") in a checkpoint's ``dcp/`` (reads metadata only)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(step_dir / SHARDED)).read_metadata()
    return {k[len(part) + 1:] for k in meta.state_dict_metadata if k.startswith(part + ".")}
