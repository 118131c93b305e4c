"""Multihead attention pooling with a learned latent query ("MAP" head), as SigLIP's image tower pools.

SigLIP (Zhai et al., 2023) and big_vision pool a ViT's tokens with one learned query that attends over them
(Lee et al., 2019, "Set Transformer": PMA), then a residual pre-LN MLP. Parameter names follow timm's
``AttentionPoolLatent`` (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1/fc2``) so SigLIP checkpoints
from timm / open_clip load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from openeva.layers.attention import attention
from openeva.layers.mlp import Mlp


class AttentionPoolLatent(nn.Module):
    """Tokens (B, N, D) -> pooled (B, D): latent query -> MHA over the tokens -> proj -> x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, norm_eps: float = 1e-6, act: str = "gelu"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention-pool width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act=act)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's latent init (trunc-normal, std ``D^-0.5``); the Linears and LN are left to the caller's init."""
        nn.init.trunc_normal_(self.latent, std=self.latent.shape[-1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q(self.latent.expand(B, -1, -1).to(x.dtype)).view(B, 1, H, hd).transpose(1, 2)  # (B, H, 1, hd)
        k, v = self.kv(x).view(B, N, 2, H, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd) each
        x = attention(q, k, v).transpose(1, 2).reshape(B, 1, D)  # (B, 1, D)
        x = self.proj(x)
        x = x + self.mlp(self.norm(x))  # (B, 1, D)
        return x[:, 0]  # (B, D)
