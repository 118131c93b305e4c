"""Token merging (ToMe) for every EVAViT image tower: EVA-02 with 2D RoPE, plain ViTs, SigLIP; training-free.

ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023) merges the ``r`` most similar token pairs
in every block, between attention and the MLP: bipartite soft matching on the attention keys averaged over
heads (alternate tokens form the two sets; each token of set A joins its most similar token of set B; the r
best such edges are merged), size-weighted averages, and proportional attention (``log(size)`` added to the
attention logits so a token standing for s patches weighs like s of them). A class token is never merged;
towers without one (SigLIP's attention-pooled 'map' towers) protect nothing.

Plain ViTs (OpenAI / LAION CLIP, SigLIP) carry learned absolute positions inside the tokens: ToMe as published.
EVA-02 instead rotates q and k by 2D RoPE in every block, from each token's (row, column) patch coordinate. Here
each token carries its coordinate through the merges (the size-weighted mean of the merged tokens' coordinates)
and the later blocks compute the rotary angles at those fractional positions. Averaging sin/cos tables instead
would give vectors that are no longer rotations. The size bias goes to SDPA as an additive mask.

``apply_tome(model, r)`` switches a built EVAViT or CLIP (its image tower) to merging; ``r=0`` restores it;
``r="auto"`` picks :func:`auto_r` for the tower (at least a quarter of the patch tokens reach the end). The
weights and the state dict are unchanged. ``forward_intermediates`` (dense maps) stays unmerged. Towers that are
not ViTs (timm's ConvNeXt, Swin, ...) are refused with the reason (:func:`tome_refusal`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from openeva.layers.rope import rope_frequencies
from openeva.models.families import family_name
from openeva.models.vit import Block, EVAViT

SCHEDULES = ("constant", "decreasing")
AUTO_KEEP = 0.25  # r="auto": at least this fraction of the patch tokens is left after the last block


def merge_schedule(r: int | Sequence[int], depth: int, schedule: str = "constant") -> list[int]:
    """Tokens merged after each block's attention: ``r`` per block, or from 2r down to 0 ("decreasing",
    about the same total: early blocks merge more), or an explicit per-block list."""
    if isinstance(r, bool) or isinstance(r, (float, str)) or (isinstance(r, numbers.Number)
                                                              and not isinstance(r, numbers.Integral)):
        raise ValueError(f"tome r must be an int >= 0 or one int per block, got {r!r}")
    if not isinstance(r, numbers.Integral):
        rs = list(r)
        if len(rs) != depth or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in rs):
            raise ValueError(f"a per-block r needs {depth} ints >= 0, got {rs}")
        return [int(v) for v in rs]
    r = int(r)
    if r < 0:
        raise ValueError(f"tome r must be an int >= 0, got {r!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"tome schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or depth == 1:
        return [r] * depth
    return [int(round(2 * r * (1 - i / (depth - 1)))) for i in range(depth)]


def rope_angles_at(pos: torch.Tensor, grid: tuple[int, int], head_dim: int, ref_grid: tuple[int, int] | None,
                   temperature: float = 10000.0, bands: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary angles at fractional (row, col) patch positions (B, N, 2) -> (B, N, head_dim/2).

    The same arithmetic as ``rope_angles_2d`` (coordinate / n * ref, times the bands), so integer positions give
    bit-identical angles to the shared table. ``bands``: the precomputed ``rope_frequencies`` (F,).
    """
    if bands is None:
        bands = rope_frequencies(head_dim, temperature).to(pos.device)  # (F,)
    ref = ref_grid or grid
    rows = pos[..., 0:1] / grid[0] * ref[0]  # (B, N, 1)
    cols = pos[..., 1:2] / grid[1] * ref[1]
    return torch.cat([rows * bands, cols * bands], dim=-1)  # (B, N, 2F)


@dataclass
class Matching:
    """The outcome of one bipartite matching over N tokens: which A tokens stay, which merge into which B."""

    unm: torch.Tensor  # (B, Na - r) A tokens kept, original order (CLS first)
    src: torch.Tensor  # (B, r) A tokens merged away
    dst: torch.Tensor  # (B, r) their partners in B
    num_a: int
    num_b: int

    def merge(self, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """(B, N, ...) -> (B, N - r, ...): kept A tokens in order, then B with the merged A tokens reduced in."""
        B = x.shape[0]
        xa, xb = x[:, ::2], x[:, 1::2]  # (B, Na, ...), (B, Nb, ...)
        tail = x.shape[2:]

        def idx(t):  # (B, k) -> index shaped like x's trailing dims
            return t.view(B, -1, *([1] * len(tail))).expand(-1, -1, *tail)

        kept = xa.gather(1, idx(self.unm))
        moved = xa.gather(1, idx(self.src))
        xb = xb.scatter_reduce(1, idx(self.dst), moved, reduce=reduce)
        return torch.cat([kept, xb], dim=1)

    def new_index(self) -> torch.Tensor:
        """(B, N) long: where each of the N tokens lands in the merged sequence (merged A tokens: their B)."""
        B, kept = self.unm.shape
        a_new = torch.empty(B, self.num_a, dtype=torch.long, device=self.unm.device)
        a_new.scatter_(1, self.unm, torch.arange(kept, device=a_new.device).expand(B, -1))
        a_new.scatter_(1, self.src, kept + self.dst)
        b_new = (kept + torch.arange(self.num_b, device=a_new.device)).expand(B, -1)
        out = torch.empty(B, self.num_a + self.num_b, dtype=torch.long, device=a_new.device)
        out[:, ::2], out[:, 1::2] = a_new, b_new
        return out


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1) -> Matching:
    """ToMe's matching on (B, N, C) key features: the ``r`` A tokens most similar to a B token merge into it.

    Set A = even tokens, set B = odd tokens; the CLS token (index 0, in A) is never merged and keeps its place
    first (``protected`` is 1 for towers with a class token, 0 for those without: SigLIP's 'map' towers).
    """
    if protected not in (0, 1):
        raise ValueError(f"token merging protects at most the one CLS token, got protected={protected}")
    B, N, _ = metric.shape
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb) cosine similarity
        if protected:
            scores[:, 0] = -math.inf  # CLS (index 0) is in A
        best, best_b = scores.max(dim=-1)  # (B, Na)
        order = best.argsort(dim=-1, descending=True)  # (B, Na): strongest edges first
        src = order[:, :r]  # (B, r)
        unm = order[:, r:].sort(dim=-1).values  # (B, Na - r)
        dst = best_b.gather(1, src)  # (B, r)
    return Matching(unm, src, dst, a.shape[1], b.shape[1])


def merge_tokens(matching: Matching, x: torch.Tensor, pos: torch.Tensor, size: torch.Tensor, weighted: bool = True):
    """Size-weighted merge of tokens (B, N, D), positions (B, N, 2) and sizes (B, N, 1) (fp32).

    ``weighted=False`` while every size is 1 (the first merge): the same result without two multiplies.
    """
    pos_size = matching.merge(torch.cat([pos * size, size], dim=-1), "sum")  # (B, N - r, 3) in one pass
    new_size = pos_size[..., 2:]  # (B, N - r, 1)
    x = matching.merge(x * size.to(x.dtype) if weighted else x, "sum") / new_size.to(x.dtype)
    return x, pos_size[..., :2] / new_size, new_size


def _block(blk: Block, x, rope, pos, size, r: int, prefix: int, merged: bool):
    """One block with a merge between attention and MLP; -> x, pos, size, matching (None when nothing merged)."""
    bias = size.log().transpose(1, 2).unsqueeze(1) if merged else None  # (B, 1, 1, N); skipped while all 1
    inp = x if blk.post_norm else blk.norm1(x)
    r = min(r, (x.shape[1] - prefix) // 2)
    if r > 0:
        a, metric = blk.attn.forward_with_keys(inp, rope, bias)
    else:
        a, metric = blk.attn(inp, rope, bias), None
    x = x + blk.drop_path1(blk.norm1(a) if blk.post_norm else a)
    matching = None
    if r > 0:
        matching = bipartite_soft_matching(metric, r, prefix)
        x, pos, size = merge_tokens(matching, x, pos, size, weighted=merged)
    if blk.post_norm:
        return x + blk.drop_path2(blk.norm2(blk.mlp(x))), pos, size, matching
    return x + blk.drop_path2(blk.mlp(blk.norm2(x))), pos, size, matching


class ToMeEVAViT(EVAViT):
    """An EVAViT that merges tokens in ``forward_features`` / ``forward`` (set by :func:`apply_tome`).

    ``forward_features`` returns one row per original token, as the unmerged model does: each patch gets the
    (final, normed) token it was merged into. A plain mean over those rows is then the size-weighted mean
    over the merged tokens, so ``forward_head`` pools exactly as ToMe does, through every path (``forward``,
    ``encode_image``, ``forward_head(forward_features(x), pre_logits=True)``).
    """

    tome_r: list[int]

    def forward_tome(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Images -> (merged tokens (B, 1 + N', D) after the final norm, sizes (B, 1 + N', 1), positions
        (B, 1 + N', 2), source map (B, 1 + N): the merged row each original token ended in)."""
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
        source = torch.arange(N, device=x.device).expand(B, -1)  # (B, N): original token -> current row
        bands = rope_frequencies(self.rope.head_dim, self.rope.temperature).to(x.device) if rope is not None else None
        merged = False
        for blk, r in zip(self.blocks, self.tome_r):
            x, pos, size, matching = _block(blk, x, rope, pos, size, r, P, merged)
            if matching is not None:
                merged = True
                source = matching.new_index().gather(1, source)
                if rope is not None:  # per-sample angles at the merged tokens' positions, for the next blocks
                    angles = rope_angles_at(pos, grid, self.rope.head_dim, self.rope.ref_grid, bands=bands)
                    angles[:, :P] = 0.0  # prefix tokens are not rotated
                    rope = (angles.sin().unsqueeze(1), angles.cos().unsqueeze(1))  # (B, 1, N', hd/2)
        return self.norm(x), size, pos, source

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens, _, _, source = self.forward_tome(x, mask)  # (B, N', D), (B, N)
        return tokens.gather(1, source.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, 1 + N, D)


def tome_refusal(model: nn.Module) -> str | None:
    """Why token merging cannot apply to ``model``'s image tower, or None when it can.

    ToMe needs a plain token sequence through every block (a ViT): openeva's EVAViT in every variant, or timm's
    ``VisionTransformer`` as a tower's trunk (:mod:`openeva.models.tome_timm`). Windowed or convolutional stages
    (ConvNeXt, Swin, ...) work on a spatial grid that merged tokens no longer form.
    """
    from openeva.models import tome_timm

    tower = model.visual if hasattr(model, "visual") else model
    if isinstance(tower, EVAViT):
        return None
    trunk = tome_timm.timm_vit_trunk(tower)
    if trunk is not None:
        why = tome_timm.timm_refusal(trunk)
        return None if why is None else f"{family_name(tower)}: {why}"
    what = "its image tower" if tower is not model else "it"
    return (f"token merging needs a ViT image tower (one token sequence through every block); {what} is "
            f"{family_name(tower)}, not a ViT: its stages work on a spatial grid (convolutions or windowed attention) "
            f"that merged tokens no longer form")


def _tower(model: nn.Module) -> nn.Module:
    """The module that merges: the EVAViT, or the timm ViT trunk of a timm tower."""
    from openeva.models import tome_timm

    why = tome_refusal(model)
    if why is not None:
        raise TypeError(why)
    tower = model.visual if hasattr(model, "visual") else model
    return tower if isinstance(tower, EVAViT) else tome_timm.timm_vit_trunk(tower)


def _grid_depth(tower: nn.Module) -> tuple[int, int]:
    from openeva.models import tome_timm

    if isinstance(tower, EVAViT):
        gh, gw = tower.cfg.grid_size
        return gh * gw, tower.cfg.depth
    return tome_timm.grid_and_depth(tower)


def token_geometry(model: nn.Module) -> tuple[int, int]:
    """(patch tokens at the image tower's input size, blocks) of a tower that can merge tokens."""
    return _grid_depth(_tower(model))


def auto_r(model: nn.Module, keep: float = AUTO_KEEP) -> int:
    """The default ``r`` of a tower: the largest constant r that leaves at least ``keep`` of the patch tokens
    after the last block, ``floor((1 - keep) * N / depth)`` for N patches at the tower's image size.

    ViT-B-32 (49 patches, 12 blocks): r=3, 13 tokens left; ViT-B-16 and SigLIP B-16 (196, 12): r=12, 52 left;
    EVA02-L-14 (256, 24): r=8, 64 left. ToMe's paper used r=16 on ViT-B/16 (5 tokens left), which costs more
    accuracy on small grids; pass an int for that.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    n, depth = _grid_depth(_tower(model))
    return int((1.0 - keep) * n // depth)


def apply_tome(model: nn.Module, r: int | Sequence[int] | str = "auto", schedule: str = "constant") -> nn.Module:
    """Merge ``r`` tokens per block in the image tower of ``model`` (in place; returns it). ``r=0``: off.

    ``r`` an int (with ``schedule`` "constant" or "decreasing"), one value per block, or "auto"
    (:func:`auto_r`). Works on an EVAViT backbone or a CLIP's ``visual`` (EVA-02, plain ViT, SigLIP) and on timm
    ViT towers (ViTamin, ...); the state dict is untouched, so checkpoints load and save as before. Other towers
    raise ``TypeError`` with the family and the reason.
    """
    from openeva.models import tome_timm

    tower = _tower(model)
    if isinstance(r, str):
        if r != "auto":
            raise ValueError(f"tome r must be an int >= 0, one int per block, or 'auto', got {r!r}")
        r = auto_r(model)
    rs = merge_schedule(r, _grid_depth(tower)[1], schedule)
    if not isinstance(tower, EVAViT):
        tome_timm.apply(tower, rs if any(rs) else None)
        return model
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
    return list(tower.tome_r) if hasattr(tower, "tome_r") else None


def is_merging(model: nn.Module) -> bool:
    """Whether any tower of ``model`` merges tokens now (its forward is then data-dependent)."""
    from openeva.models.tome_timm import ToMeTimmViT

    return any(isinstance(m, (ToMeEVAViT, ToMeTimmViT)) for m in model.modules())
