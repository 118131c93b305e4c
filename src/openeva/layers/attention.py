"""EVA self-attention: fused qkv with q/v biases (no k bias), optional RoPE and sub-LN, PyTorch SDPA.

All EVA variants store q/k/v as one ``qkv`` matrix here, even the B/L checkpoints that ship separate
``q_proj/k_proj/v_proj``: one matmul instead of three is faster, and the converters fuse on load.
The CLIP B/L towers add ``norm`` (EVA's ``inner_attn_ln``), a LayerNorm on the merged heads before ``proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openeva.layers.rope import apply_rope


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        inner_norm: bool = False,
        norm_eps: float = 1e-6,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if inner_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_bias(self) -> torch.Tensor | None:
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))  # (3D,)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())  # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        if rope is not None:
            qk = apply_rope(qkv[:2], *rope)  # (2, B, H, N, hd): q and k rotated in one op
            q, k, v = qk[0], qk[1], qkv[2]
        else:
            q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(B, N, D)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))
