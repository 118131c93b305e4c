"""EVA self-attention: fused qkv with q/v biases (no k bias), optional RoPE and sub-LN, PyTorch SDPA.

All EVA variants store q/k/v as one ``qkv`` matrix here, even the B/L checkpoints that ship separate
``q_proj/k_proj/v_proj``: one matmul instead of three is faster, and the converters fuse on load.
The CLIP B/L towers add ``norm`` (EVA's ``inner_attn_ln``), a LayerNorm on the merged heads before ``proj``.

:func:`attention` is the one place both towers call attention: PyTorch SDPA, except for bf16 on CPU with
short sequences, where two batched matmuls and a softmax are faster (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openeva.layers.rope import apply_rope


# Longest sequence for which explicit attention beats SDPA on CPU in bf16 (measured on an AVX-512 BF16 CPU,
# torch 2.14: for inference up to ~256 tokens, for training, whose SDPA backward is 2-7x slower, up to 1024).
CPU_EXPLICIT_MAX_TOKENS = 256
CPU_EXPLICIT_MAX_TOKENS_TRAIN = 1024


def _use_explicit(q: torch.Tensor, attn_mask, dropout_p: float) -> bool:
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or dropout_p > 0:
        return False
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # boolean masks: SDPA's own semantics
        return False
    n = max(q.shape[-2], 1)
    return n <= (CPU_EXPLICIT_MAX_TOKENS_TRAIN if torch.is_grad_enabled() and q.requires_grad
                 else CPU_EXPLICIT_MAX_TOKENS)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention of (B, H, N, hd) q/k/v -> (B, H, N, hd), as ``F.scaled_dot_product_attention``.

    PyTorch's CPU flash kernel is slow for short sequences in reduced precision: its backward runs 7x slower
    than two batched matmuls and a softmax at 65 tokens and 2x slower at 197 (ViT-B/16), and its forward is
    slower up to about 256 tokens. There (CPU, bf16, no dropout, no mask or an additive float one, such as token
    merging's size bias) the explicit form is used; the
    N x N probabilities it keeps for backward are small at those lengths. Everywhere else, and on GPU, SDPA
    (fp16 too: its explicit N x N scores could overflow where SDPA accumulates in fp32).
    """
    if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.dtype != q.dtype:
        attn_mask = attn_mask.to(q.dtype)  # an additive mask in q's dtype (q is bf16 under autocast)
    if not _use_explicit(q, attn_mask, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
    if attn_mask is not None:
        scores = scores + attn_mask  # broadcast from (B or 1, H or 1, N or 1, N)
    if is_causal:
        n, m = scores.shape[-2:]
        future = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1)  # (N, N): True above the diagonal
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, N, hd)


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

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, 3D); through the module itself once the q/v biases are folded into it (int8)."""
        if self.q_bias is None:
            return self.qkv(x)
        return F.linear(x, self.qkv.weight, self.qkv_bias())

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> q, k, v stacked as (3, B, H, N, hd), before RoPE."""
        B, N, _ = x.shape
        qkv = self.project_qkv(x)  # (B, N, 3D)
        return qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)

    def _attend(self, qkv: torch.Tensor, rope, attn_mask) -> torch.Tensor:
        """(3, B, H, N, hd) -> (B, N, D): RoPE on q and k, attention, merged heads, sub-LN, projection."""
        _, B, H, N, hd = qkv.shape
        if rope is not None:
            qk = apply_rope(qkv[:2], *rope)  # (2, B, H, N, hd): q and k rotated in one op
            q, k, v = qk[0], qk[1], qkv[2]
        else:
            q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        x = attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(B, N, H * hd)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._attend(self._heads(x), rope, attn_mask)

    def forward_with_keys(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` plus the keys averaged over heads, before RoPE (B, N, hd): token merging's similarity."""
        qkv = self._heads(x)
        return self._attend(qkv, rope, attn_mask), qkv[1].mean(dim=1)
