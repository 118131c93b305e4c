"""Token merging (ToMe) for EVA-02 / EVA-CLIP image towers, training-free, with 2D RoPE kept exact.

ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023) merges the ``r`` most similar token pairs
in every block, between attention and the MLP: bipartite soft matching on the attention keys averaged over
heads (alternate tokens form the two sets; each token of set A joins its most similar token of set B; the r
best such edges are merged), size-weighted averages, and proportional attention (``log(size)`` added to the
attention logits so a token standing for s patches weighs like s of them). The CLS token is never merged.

ToMe was written for absolute position embeddings, which ride inside the tokens. EVA-02 instead rotates q and k
by 2D RoPE in every block, from each token's (row, column) patch coordinate. Here each token carries its
coordinate through the merges (the size-weighted mean of the merged tokens' coordinates) and the later blocks
compute the rotary angles at those fractional positions. Averaging sin/cos tables instead would give vectors
that are no longer rotations. The size bias goes to SDPA as an additive mask.

``apply_tome(model, r)`` switches a built EVAViT or CLIP (its image tower) to merging; ``r=0`` restores it.
The weights and the state dict are unchanged. ``forward_intermediates`` (dense maps) stays unmerged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from openeva.layers.attention import attention
from openeva.layers.rope import apply_rope, rope_frequencies
from openeva.models.vit import Block, EVAViT

SCHEDULES = ("constant", "decreasing")


def merge_schedule(r: int | Sequence[int], depth: int, schedule: str = "constant") -> list[int]:
    """Tokens merged after each block's attention: ``r`` per block, or from 2r down to 0 ("decreasing",
    about the same total: early blocks merge more), or an explicit per-block list."""
    if not isinstance(r, int):
        rs = [int(v) for v in r]
        if len(rs) != depth or any(v < 0 for v in rs):
            raise ValueError(f"a per-block r needs {depth} values >= 0, got {list(r)}")
        return rs
    if isinstance(r, bool) or r < 0:
        raise ValueError(f"tome r must be an int >= 0, got {r!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"tome schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or depth == 1:
        return [r] * depth
    return [int(round(2 * r * (1 - i / (depth - 1)))) for i in range(depth)]


def rope_angles_at(pos: torch.Tensor, grid: tuple[int, int], head_dim: int, ref_grid: tuple[int, int] | None,
                   temperature: float = 10000.0) -> torch.Tensor:
    """Rotary angles at fractional (row, col) patch positions (B, N, 2) -> (B, N, head_dim/2).

    The same arithmetic as ``rope_angles_2d`` (coordinate / n * ref, times the bands), so integer positions give
    bit-identical angles to the shared table.
    """
    bands = rope_frequencies(head_dim, temperature).to(pos.device)  # (F,)
    ref = ref_grid or grid
    rows = pos[..., 0:1] / grid[0] * ref[0]  # (B, N, 1)
    cols = pos[..., 1:2] / grid[1] * ref[1]
    return torch.cat([rows * bands, cols * bands], dim=-1)  # (B, N, 2F)


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1):
    """ToMe's matching on (B, N, C) key features; returns ``merge(x, reduce)`` for (B, N, ...) tensors.

    Set A = even tokens, set B = odd tokens; the first ``protected`` tokens (CLS, even) are never merged and
    keep their place first. ``merge`` returns (B, N - r, ...): unmerged A tokens in original order, then B.
    """
    B, N, _ = metric.shape
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb) cosine similarity
        scores[:, : (protected + 1) // 2] = -math.inf  # CLS (index 0) is in A
        best, best_b = scores.max(dim=-1)  # (B, Na)
        order = best.argsort(dim=-1, descending=True)  # (B, Na): strongest edges first
        src = order[:, :r]  # (B, r) A tokens merged away
        unm = order[:, r:].sort(dim=-1).values  # (B, Na - r) A tokens kept, original order (CLS first)
        dst = best_b.gather(1, src)  # (B, r) their partners in B

    def merge(x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        xa, xb = x[:, ::2], x[:, 1::2]  # (B, Na, ...), (B, Nb, ...)
        tail = x.shape[2:]

        def idx(t):  # (B, k) -> index shaped like x's trailing dims
            return t.view(B, -1, *([1] * len(tail))).expand(-1, -1, *tail)

        kept = xa.gather(1, idx(unm))
        moved = xa.gather(1, idx(src))
        xb = xb.scatter_reduce(1, idx(dst), moved, reduce=reduce)
        return torch.cat([kept, xb], dim=1)  # (B, N - r, ...)

    return merge


def merge_tokens(merge, x: torch.Tensor, pos: torch.Tensor, size: torch.Tensor):
    """Size-weighted merge of tokens (B, N, D), positions (B, N, 2) and sizes (B, N, 1)."""
    new_size = merge(size, "sum")  # (B, N - r, 1)
    x = merge(x * size.to(x.dtype), "sum") / new_size.to(x.dtype)
    pos = merge(pos * size, "sum") / new_size
    return x, pos, new_size


def _attention(attn, x: torch.Tensor, rope, size_bias: torch.Tensor | None):
    """EVA attention (as ``Attention.forward``) that also returns the head-averaged keys (B, N, hd) before RoPE."""
    B, N, D = x.shape
    qkv = attn.project_qkv(x)  # (B, N, 3D)
    qkv = qkv.view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
    metric = qkv[1].mean(dim=1)  # (B, N, hd): content keys, before the position rotation
    if rope is not None:
        qk = apply_rope(qkv[:2], *rope)
        q, k, v = qk[0], qk[1], qkv[2]
    else:
        q, k, v = qkv.unbind(0)
    mask = size_bias.to(q.dtype) if size_bias is not None else None  # (B, 1, 1, N): log(size) per key
    x = attention(q, k, v, attn_mask=mask, dropout_p=attn.attn_drop if attn.training else 0.0)
    x = attn.norm(x.transpose(1, 2).reshape(B, N, D))
    return attn.proj_drop(attn.proj(x)), metric


def _block(blk: Block, x, rope, pos, size, r: int, prefix: int, merged: bool):
    """One block with a merge between attention and MLP; -> x, pos, size (fewer tokens when r > 0)."""
    bias = size.log().transpose(1, 2).unsqueeze(1) if merged else None  # (B, 1, 1, N); skipped while all 1
    if blk.post_norm:
        a, metric = _attention(blk.attn, x, rope, bias)
        x = x + blk.drop_path1(blk.norm1(a))
    else:
        a, metric = _attention(blk.attn, blk.norm1(x), rope, bias)
        x = x + blk.drop_path1(a)
    r = min(r, (x.shape[1] - prefix) // 2)
    if r > 0:
        x, pos, size = merge_tokens(bipartite_soft_matching(metric, r, prefix), x, pos, size)
    if blk.post_norm:
        return x + blk.drop_path2(blk.norm2(blk.mlp(x))), pos, size
    return x + blk.drop_path2(blk.mlp(blk.norm2(x))), pos, size


class ToMeEVAViT(EVAViT):
    """An EVAViT that merges tokens in ``forward_features`` / ``forward`` (set by :func:`apply_tome`)."""

    tome_r: list[int]

    def forward_tome(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Images -> (tokens (B, 1 + N', D) after the final norm, sizes (B, 1 + N', 1), positions (B, 1 + N', 2))."""
        if self.training and self.cfg.patch_drop_rate > 0:
            raise ValueError("token merging and patch dropout do not combine; set patch_drop_rate=0 or eval()")
        x, rope, grid = self._embed(x, mask)
        B, N, _ = x.shape
        P = self.num_prefix_tokens
        rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float32, device=x.device),
                                    torch.arange(grid[1], dtype=torch.float32, device=x.device), indexing="ij")
        pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)  # (H*W, 2) integer patch coordinates
        pos = torch.cat([pos.new_zeros(P, 2), pos]).expand(B, -1, -1)  # (B, N, 2); prefix rows unused
        size = torch.ones(B, N, 1, device=x.device)  # (B, N, 1) patches per token
        merged = False
        for blk, r in zip(self.blocks, self.tome_r):
            if merged and rope is not None:  # per-sample angles at the merged tokens' positions
                angles = rope_angles_at(pos, grid, self.rope.head_dim, self.rope.ref_grid, self.rope.temperature)
                angles[:, :P] = 0.0  # prefix tokens are not rotated
                rope = (angles.sin().unsqueeze(1), angles.cos().unsqueeze(1))  # (B, 1, N', hd/2)
            x, pos, size = _block(blk, x, rope, pos, size, r, P, merged)
            merged = merged or x.shape[1] < N
        return self.norm(x), size, pos

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_tome(x, mask)[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens, size, _ = self.forward_tome(x, mask)
        if self.cfg.global_pool == "avg":  # size-weighted: the mean over the original patches
            P = self.num_prefix_tokens
            w = size[:, P:].to(tokens.dtype)  # (B, N', 1)
            pooled = (tokens[:, P:] * w).sum(dim=1) / w.sum(dim=1)  # (B, D)
            return self.head(self.head_drop(self.fc_norm(pooled)))
        return self.forward_head(tokens)


def _tower(model: nn.Module) -> EVAViT:
    if isinstance(model, EVAViT):
        return model
    if isinstance(getattr(model, "visual", None), EVAViT):
        return model.visual
    raise TypeError(f"token merging applies to EVA ViTs and CLIP models with an EVA image tower, not "
                    f"{type(model).__name__}")


def apply_tome(model: nn.Module, r: int | Sequence[int], schedule: str = "constant") -> nn.Module:
    """Merge ``r`` tokens per block in the image tower of ``model`` (in place; returns it). ``r=0``: off.

    ``r`` an int (with ``schedule`` "constant" or "decreasing") or one value per block. Works on an EVAViT
    backbone or a CLIP's ``visual``; the state dict is untouched, so checkpoints load and save as before.
    """
    tower = _tower(model)
    rs = merge_schedule(r, tower.cfg.depth, schedule)
    if not any(rs):
        if isinstance(tower, ToMeEVAViT):
            tower.__class__ = EVAViT
            del tower.tome_r
        return model
    tower.__class__ = ToMeEVAViT  # the ToMe paper's own approach: same module, merging forward
    tower.tome_r = rs
    return model


def tome_tokens(model: nn.Module) -> list[int] | None:
    """Tokens merged per block, or None when merging is off."""
    tower = _tower(model)
    return list(tower.tome_r) if isinstance(tower, ToMeEVAViT) else None
