"""Mixed precision for training: fp32, bf16 autocast, or fp16 autocast with a gradient scaler.

Weights and optimizer state stay fp32 in every mode (autocast casts per op), as open_clip's ``amp`` /
``amp_bf16``; fp16 needs loss scaling so small gradients do not underflow, bf16 does not.
"""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``autocast()`` context for forward passes and a scaler (a pass-through unless fp16)."""

    def __init__(self, precision: str, device: torch.device):
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.name = precision
        self.device = torch.device(device)
        self.dtype = _DTYPES.get(precision)
        enabled = precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled) if enabled else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step; returns False when fp16 found inf/NaN gradients and skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
