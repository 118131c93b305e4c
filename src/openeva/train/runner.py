"""``train(cfg)``: from a validated config to a finished run directory, in one process or under torchrun / SLURM.

Order matters for the promise that a bad config fails before compute: the config is validated when built,
then the run directory and the Task's preflight (model name, weight files, data paths) are checked, and
only then are processes joined, models built and data opened.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from openeva.train.checkpointing import CheckpointManager
from openeva.train.config import TrainConfig
from openeva.train.distributed import init_world, shutdown
from openeva.train.engine import Trainer, seed_all
from openeva.train.options import canonical_task, register_task_options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEntry:
    """``build(cfg, world) -> (task, data)``; ``preflight(cfg)`` raises on bad input without computing."""

    build: Callable
    preflight: Callable | None = None


# The built-in tasks by name: (module, build function, preflight function), imported when a run uses them.
_TASKS: dict[str, TaskEntry | tuple[str, str, str | None]] = {
    "clip": ("openeva.train.clip_task", "build_clip", "preflight_clip"),
    "mim": ("openeva.train.mim_task", "build_mim", "preflight_mim"),
    "finetune": ("openeva.train.finetune_task", "build_finetune", "preflight_finetune"),
    "segmentation": ("openeva.train.segmentation_task", "build_segmentation", "preflight_segmentation"),
}


def register_task(name: str, build: Callable, preflight: Callable | None = None, options: type | None = None) -> None:
    """Make ``task=name`` in a config build with ``build(cfg, world)``; ``options``: the dataclass its
    ``task_options`` are validated against when a config is built."""
    if options is not None:
        register_task_options(name, options)
    _TASKS[name] = TaskEntry(build, preflight)


def resolve_task(name: str) -> TaskEntry:
    """A registered task name (or a built-in task's module path), or ``package.module:function``."""
    if ":" in name and canonical_task(name) not in _TASKS:
        module, _, fn = name.partition(":")
        try:
            build = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"task={name!r}: cannot import {fn} from {module} ({e})") from None
        return TaskEntry(build, getattr(build, "preflight", None))
    entry = _TASKS.get(canonical_task(name))
    if entry is None:
        raise ValueError(f"task={name!r} is not a registered task ({', '.join(sorted(_TASKS))}) nor "
                         "'package.module:build_function'")
    if isinstance(entry, tuple):
        module = importlib.import_module(entry[0])
        entry = TaskEntry(getattr(module, entry[1]), getattr(module, entry[2]) if entry[2] else None)
    return entry


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / (cfg.name or "run")


def check_run_dir(cfg: TrainConfig) -> Path:
    """A run directory that already holds checkpoints is only reused to resume (never silently overwritten)."""
    run_dir = run_dir_of(cfg)
    ckpt = CheckpointManager(run_dir, cfg.keep_last)
    if cfg.resume is None and ckpt.list():
        raise ValueError(f"run directory {run_dir} already has checkpoints; pass resume=latest to continue it "
                         "or name=<new name> for a new run")
    ckpt.resolve(cfg.resume)  # a bad resume path fails here
    return run_dir


def preflight(cfg: TrainConfig) -> TaskEntry:
    """Every check that needs no compute; returns the task entry to build."""
    check_run_dir(cfg)
    entry = resolve_task(cfg.task)
    if entry.preflight is not None:
        entry.preflight(cfg)
    return entry


def train(cfg: TrainConfig, world=None) -> dict:
    """Run ``cfg`` to completion (or ``max_steps_this_run``); returns the engine's summary.

    ``world``: an existing :class:`~openeva.train.distributed.World`; by default the environment decides
    (torchrun / SLURM variables -> a process group, else one process).
    """
    import torch.distributed as dist

    entry = preflight(cfg)
    own_group = world is None and not (dist.is_available() and dist.is_initialized())
    if world is None:
        world = init_world(cfg.device, cfg.dist.backend, timeout_s=cfg.dist.timeout_s)
    try:
        seed_all(cfg.seed)  # the same initial weights on every rank
        task, data = entry.build(cfg, world)
        trainer = Trainer(cfg, task, data, world, run_dir_of(cfg))
        return trainer.fit()
    finally:
        if own_group:
            shutdown(world)
