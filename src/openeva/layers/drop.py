"""Regularisers: stochastic depth (drop path) and FLIP-style patch dropout."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drops a residual branch per sample with probability ``p`` (stochastic depth), rescaling the kept ones."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def patch_keep_indices(batch: int, num_patches: int, rate: float, device: torch.device) -> torch.Tensor:
    """Random subset of patch indices to keep per sample (FLIP): (B, K), K = max(1, round(N * (1 - rate)))."""
    num_keep = max(1, int(num_patches * (1.0 - rate)))
    scores = torch.rand(batch, num_patches, device=device)  # (B, N)
    return scores.topk(num_keep, dim=-1).indices.sort(dim=-1).values  # (B, K)
