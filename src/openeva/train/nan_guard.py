"""The NaN guard: a non-finite loss or gradient norm restores the last checkpoint and skips the data that caused it.

EVA's MIM restarts from its last checkpoint when the loss goes NaN. openeva does the same without reading the loss
back every step: each step folds ``isfinite(loss)`` and ``isfinite(grad_norm)`` into a device tensor (the first
step that was not finite), and the engine reads it (one all-reduce MIN over ranks) only where it reads the
device anyway, at a logging step, and before writing a checkpoint (so no checkpoint holds NaN weights). Then:

* restore the newest checkpoint (weights, optimizer, schedule, data position, RNG);
* skip the data window of the first non-finite step when the replay reaches it. A window is identified by the
  global index of the step's first micro-batch, ``epoch x batches_per_epoch + position`` (the same number on
  every rank, whatever the world size's data split), and covers that step's ``accum_steps`` micro-batches on
  every rank. Skipped windows are kept in the checkpoints, so a later restore or resume skips them again;
* retry, up to ``TrainConfig.nan_max_retries`` restores per process; one more non-finite step stops the run with
  a ``FloatingPointError`` that names the setting. Every event is a ``"split": "nan_guard"`` row of
  ``metrics.jsonl``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

NONE = 2**62  # "no non-finite step yet": larger than any step, so MIN over ranks finds the first bad one


class NanGuard:
    """Device-side finiteness record of the steps since the last check, and the windows to skip."""

    def __init__(self, max_retries: int, device: torch.device):
        self.max_retries, self.device = int(max_retries), device
        self.first_bad = torch.full((), NONE, dtype=torch.long, device=device)
        self.windows: dict[int, int] = {}  # step -> global index of its first micro-batch (since the last check)
        self.skip: set[int] = set()  # first micro-batch indices of the windows never to train on
        self.retries = 0

    def record(self, step: int, window: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Fold step ``step``'s finiteness into the device record (no host read)."""
        bad = ~torch.isfinite(loss.detach()).all()
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad == NONE), step, self.first_bad)
        self.windows[step] = window

    def check(self, world) -> tuple[int, int | None] | None:
        """``(step, window)`` of the first non-finite step since the last check over every rank of ``world`` (a
        :class:`~openeva.train.distributed.World`), or None: a host read, and a collective in a multi-process
        run (every rank calls it at the same steps). Clears the record."""
        first = self.first_bad.clone()
        if world.distributed:
            first = first.to(world.device if world.backend == "nccl" else torch.device("cpu"))
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first)
        window = self.windows.get(step)
        self.first_bad.fill_(NONE)
        self.windows.clear()
        return None if step == NONE else (step, window)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the windows to skip (retries count per process, from 0 after a resume)."""
        return {"skip": sorted(self.skip)}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.skip.update(int(w) for w in state.get("skip", ()))
