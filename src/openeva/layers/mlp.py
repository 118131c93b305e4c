"""Feed-forward layers: SwiGLU (EVA-02) and the GELU MLP (EVA-01 g, EVA-02 E, OpenAI CLIP, SigLIP).

SwiGLU keeps gate and value projections packed in one ``fc1`` of shape (2H, D), ``[gate; value]`` on the
output dim, so the pair costs one matmul. EVA-02 B/L add sub-LN (``norm``, EVA's ``ffn_ln``) on the hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, sub_norm: bool = False, norm_eps: float = 1e-6, drop: float = 0.0):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.norm = nn.LayerNorm(hidden, eps=norm_eps) if sub_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # (B, N, H) each
        x = self.norm(F.silu(gate) * value)
        return self.drop(self.fc2(self.drop(x)))


ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)``: the checkpoints trained with it
    (OpenAI, MetaCLIP, DFN) need it at inference too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The MLP non-linearity by name: "gelu" (exact), "gelu_tanh" (SigLIP 2, big_vision's default) or
    "quick_gelu" (OpenAI CLIP)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
