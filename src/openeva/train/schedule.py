"""Learning-rate schedules over optimizer steps: linear warmup, then cosine, constant, or constant + cooldown.

A schedule is a pure function ``factor(step)`` in [0, 1] applied to every group's own lr
(``group["base_lr"] * group["lr_scale"]``), so per-tower lrs and layer decay keep their ratios. Being a pure
function of the step, it resumes exactly from the step alone.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str = "cosine",
              min_ratio: float = 0.0, cooldown_steps: int = 0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Warmup goes linearly from ``1/warmup`` to 1 (open_clip's ``(step + 1) / warmup``). ``cosine`` then decays
    to ``min_ratio`` at ``total_steps``; ``const`` stays at 1; ``const-cooldown`` stays at 1 until the last
    ``cooldown_steps``, then falls linearly to ``min_ratio``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "const":
        return 1.0
    if scheduler == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if scheduler == "const-cooldown":
        start = total_steps - cooldown_steps
        if step < start:
            return 1.0
        progress = min((step - start) / max(cooldown_steps, 1), 1.0)
        return 1.0 - (1.0 - min_ratio) * progress
    raise ValueError(f"scheduler must be cosine, const or const-cooldown, got {scheduler!r}")


class LRSchedule:
    """Sets every group's lr for a step; holds no state besides its settings."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 scheduler: str = "cosine", min_ratio: float = 0.0, cooldown_steps: int = 0):
        if warmup_steps > total_steps:
            raise ValueError(f"schedule.warmup_steps={warmup_steps} is longer than the run ({total_steps} steps)")
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.scheduler, self.min_ratio, self.cooldown_steps = scheduler, min_ratio, cooldown_steps
        lr_factor(0, total_steps, warmup_steps, scheduler, min_ratio, cooldown_steps)  # validates the name

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.scheduler, self.min_ratio,
                         self.cooldown_steps)

    def set_step(self, step: int) -> float:
        """Apply the lr of ``step``; returns the factor."""
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", group["lr"]) * group.get("lr_scale", 1.0) * f
        return f

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "scheduler": self.scheduler,
                "min_ratio": self.min_ratio, "cooldown_steps": self.cooldown_steps}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (the lr is a function of the step); warns when the resumed run changed the
        schedule, e.g. to train longer, since the lr then jumps."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            logger.warning("resuming with another lr schedule than the checkpoint's: %s", ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items()))
