"""Tiled log-sum-exp for contrastive losses whose B x B logits matrix never exists (Inf-CL, arXiv 2410.17243).

The softmax cross-entropy of row ``i`` is ``LSE_j(s * q_i . k_j) - s * q_i . k_pos(i)``. Only the LSE needs every
column, and it can be computed with an online softmax over column tiles: keep a running max and a running
sum per row, rescale the sum whenever the max grows, and keep only the final per-row LSE. The backward pass
recomputes each tile's logits, turns them into probabilities ``p = exp(logit - lse)`` and accumulates the
gradients for both inputs and for the scale tile by tile. Memory is O((M + N) * D + tile^2) instead of O(M * N).

When both directions of a CLIP loss use the same pair of matrices (``q`` = all images, ``k`` = all texts), one
pass over the tiles gives the row LSEs (image -> text) and the column LSEs (text -> image) together, so each
tile's logits are computed once in the forward and once in the backward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["tiled_clip_loss", "tiled_cross_entropy", "tiled_logsumexp"]


def _online_update(
    run_max: torch.Tensor, run_sum: torch.Tensor, logits: torch.Tensor, dim: int, consume: bool = False
) -> None:
    """Fold one tile into the running (max, sum of exp) along ``dim``, in place; both are fp32 views.

    ``consume`` overwrites ``logits`` instead of allocating a (Tr, Tc) temporary (for its last use).
    """
    new_max = torch.maximum(run_max, logits.amax(dim))
    run_sum.mul_((run_max - new_max).exp_())
    shifted = logits.sub_(new_max.unsqueeze(dim)) if consume else logits - new_max.unsqueeze(dim)
    run_sum.add_(shifted.exp_().sum(dim))
    run_max.copy_(new_max)


def _mask_tile(logits: torch.Tensor, row_valid, col_valid, rows: slice, cols: slice) -> None:
    """In place: a pair whose row or column is not a sample gets the lowest fp32 logit, so it adds nothing to a
    valid row's or column's LSE (and a finite, unused LSE to an invalid one: no inf - inf)."""
    if row_valid is not None:
        keep = row_valid[rows, None] & col_valid[None, cols]  # (Tr, Tc)
        logits.masked_fill_(~keep, torch.finfo(torch.float32).min)


class _TiledLogSumExp(torch.autograd.Function):
    """(q (M, D), k (N, D), scale ()) -> row LSE (M,) and, if ``with_cols``, column LSE (N,) of s * q @ k.T;
    ``row_valid`` (M,) / ``col_valid`` (N,) bool (or None) leave the pairs of padding rows out."""

    @staticmethod
    def forward(ctx, q, k, scale, tile_size: int, with_cols: bool, row_valid=None, col_valid=None):
        num_rows, num_cols = q.shape[0], k.shape[0]
        fp32 = dict(device=q.device, dtype=torch.float32)
        row_max = torch.full((num_rows,), float("-inf"), **fp32)
        row_sum = torch.zeros((num_rows,), **fp32)
        col_max = torch.full((num_cols if with_cols else 0,), float("-inf"), **fp32)
        col_sum = torch.zeros((num_cols if with_cols else 0,), **fp32)
        for r0 in range(0, num_rows, tile_size):
            rows = slice(r0, r0 + tile_size)
            q_tile = q[rows]  # (Tr, D)
            for c0 in range(0, num_cols, tile_size):
                cols = slice(c0, c0 + tile_size)
                logits = (q_tile @ k[cols].T).float().mul_(scale)  # (Tr, Tc) fp32
                _mask_tile(logits, row_valid, col_valid, rows, cols)
                # at most two (Tr, Tc) matrices are alive at once
                _online_update(row_max[rows], row_sum[rows], logits, dim=1, consume=not with_cols)
                if with_cols:
                    _online_update(col_max[cols], col_sum[cols], logits, dim=0, consume=True)
        row_lse = row_max + row_sum.log()  # (M,)
        col_lse = col_max + col_sum.log()  # (N,) or (0,)
        ctx.save_for_backward(q, k, scale, row_lse, col_lse)
        ctx.valid = (row_valid, col_valid)
        ctx.tile_size = tile_size
        ctx.with_cols = with_cols
        if not with_cols:
            ctx.mark_non_differentiable(col_lse)
        return row_lse, col_lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_row, grad_col):
        q, k, scale, row_lse, col_lse = ctx.saved_tensors
        row_valid, col_valid = ctx.valid
        tile_size = ctx.tile_size
        use_cols = ctx.with_cols and grad_col is not None
        grad_q = torch.zeros(q.shape, device=q.device, dtype=torch.float32)  # (M, D)
        grad_k = torch.zeros(k.shape, device=k.device, dtype=torch.float32)  # (N, D)
        grad_scale = torch.zeros((), device=q.device, dtype=torch.float32)
        for r0 in range(0, q.shape[0], tile_size):
            rows = slice(r0, r0 + tile_size)
            q_tile = q[rows]  # (Tr, D)
            for c0 in range(0, k.shape[0], tile_size):
                cols = slice(c0, c0 + tile_size)
                k_tile = k[cols]  # (Tc, D)
                logits = (q_tile @ k_tile.T).float().mul_(scale)  # (Tr, Tc) fp32
                _mask_tile(logits, row_valid, col_valid, rows, cols)
                # d loss / d logit = g_row[i] * softmax_row[i, j] + g_col[j] * softmax_col[i, j];
                # the column term is computed in place of the logits: two (Tr, Tc) matrices at most.
                if grad_row is not None:
                    coeff = (logits - row_lse[rows, None]).exp_().mul_(grad_row[rows, None])
                    if use_cols:
                        coeff.add_(logits.sub_(col_lse[None, cols]).exp_().mul_(grad_col[None, cols]))
                elif use_cols:
                    coeff = logits.sub_(col_lse[None, cols]).exp_().mul_(grad_col[None, cols])
                else:
                    continue
                del logits
                coeff = coeff.to(q.dtype)
                coeff_k = (coeff @ k_tile).float()  # (Tr, D) = d loss / d q_tile, before the scale
                # d loss / d scale = sum_ij coeff_ij * <q_i, k_j> = sum_i <q_i, (coeff @ k)_i>
                grad_scale += (q_tile.float() * coeff_k).sum()
                grad_q[rows] += coeff_k.mul_(scale)
                grad_k[cols] += (coeff.T @ q_tile).float().mul_(scale)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_scale.to(scale.dtype), None, None, None, None


def _check_pair(q: torch.Tensor, k: torch.Tensor, tile_size: int) -> None:
    if q.ndim != 2 or k.ndim != 2:
        raise ValueError(f"expected 2-D (rows, dim) features, got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"feature dims differ: {tuple(q.shape)} vs {tuple(k.shape)}")
    if q.shape[0] == 0 or k.shape[0] == 0:
        raise ValueError(f"empty features: {tuple(q.shape)} and {tuple(k.shape)}")
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")


def as_scale(logit_scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim fp32 scale, differentiable back to ``logit_scale`` when it is a tensor."""
    if not torch.is_tensor(logit_scale):
        return torch.tensor(float(logit_scale), device=like.device, dtype=torch.float32)
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must hold one value, got shape {tuple(logit_scale.shape)}")
    return logit_scale.float().reshape(())


def tiled_logsumexp(
    q: torch.Tensor,
    k: torch.Tensor,
    logit_scale: torch.Tensor | float,
    tile_size: int = 1024,
    both_directions: bool = False,
    row_valid: torch.Tensor | None = None,
    col_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-wise (and optionally column-wise) fp32 log-sum-exp of ``logit_scale * q @ k.T`` in tiles.

    q: (M, D), k: (N, D). Returns ``(row_lse (M,), col_lse (N,) or None)``; differentiable w.r.t. ``q``, ``k``
    and a tensor ``logit_scale``. ``row_valid`` (M,) and ``col_valid`` (N,) bool, given together, leave out the
    pairs of rows that are padding (a valid row's LSE covers the valid columns only; an invalid row's LSE is a
    finite value to be ignored). Under autocast the tile matmuls run in the autocast dtype, as a plain
    ``q @ k.T`` would; statistics are always accumulated in fp32.
    """
    _check_pair(q, k, tile_size)
    if (row_valid is None) != (col_valid is None):
        raise ValueError("row_valid and col_valid go together (one bool mask per side)")
    scale = as_scale(logit_scale, q)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(q.dtype, k.dtype)
    with torch.autocast(device_type=device_type, enabled=False):
        row_lse, col_lse = _TiledLogSumExp.apply(q.to(dtype), k.to(dtype), scale, tile_size, both_directions,
                                                 row_valid, col_valid)
    return row_lse, (col_lse if both_directions else None)


def positive_logits(q: torch.Tensor, k_pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s * <q_i, k_pos_i> per row in fp32: the diagonal of the logits matrix, O(M * D)."""
    return (q.float() * k_pos.float()).sum(-1) * scale  # (M,)


def tiled_cross_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    logit_scale: torch.Tensor | float,
    offset: int = 0,
    tile_size: int = 1024,
) -> torch.Tensor:
    """Mean softmax cross-entropy of the rows of ``logit_scale * q @ k.T`` with row ``i``'s target column
    ``offset + i``; equal to ``F.cross_entropy(s * q @ k.T, arange(M) + offset)`` without the (M, N) matrix.
    """
    if offset < 0 or offset + q.shape[0] > k.shape[0]:
        raise ValueError(f"targets offset {offset} + {q.shape[0]} rows exceed the {k.shape[0]} columns")
    row_lse, _ = tiled_logsumexp(q, k, logit_scale, tile_size)
    positives = positive_logits(q, k[offset:offset + q.shape[0]], as_scale(logit_scale, q))
    return (row_lse - positives).mean()


def tiled_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    tile_size: int = 1024,
) -> torch.Tensor:
    """Symmetric CLIP loss over matched (B, D) pairs, both directions from one pass over the tiles."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must have the same shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    row_lse, col_lse = tiled_logsumexp(image_features, text_features, logit_scale, tile_size, both_directions=True)
    positives = positive_logits(image_features, text_features, as_scale(logit_scale, image_features))  # (B,)
    return ((row_lse - positives).mean() + (col_lse - positives).mean()) / 2
