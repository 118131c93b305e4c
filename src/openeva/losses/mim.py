"""Masked-image-modelling losses.

* :func:`mim_cosine_loss`: EVA-02 regresses the CLIP teacher's features of the masked patches with a negative
  cosine similarity (Fang et al. 2023, arXiv 2303.11331).
* :func:`pixel_regression_loss`: MAE's per-patch normalised pixel MSE (He et al. 2021, arXiv 2111.06377),
  with :func:`patchify` / :func:`unpatchify` to turn images into patch vectors and back.

Both take every patch with a ``mask`` that weights the masked ones, because EVA's block masks hold a varying
number of patches per image (:mod:`openeva.data.masking`): the loss is the mean over all masked patches of the
batch, as EVA-02 computes it (``lm_head(x[bool_masked_pos])`` then ``.mean()``: an image with more masked
patches weighs more), with static shapes and no host sync (selecting ``x[mask]`` needs the count on the host).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mim_cosine_loss", "patchify", "pixel_regression_loss", "unpatchify"]


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 2:
        raise ValueError(f"{name}: expected (..., C) tensors with at least 2 dims, got {tuple(pred.shape)}")
    if pred.numel() == 0:
        raise ValueError(f"{name}: empty input {tuple(pred.shape)} (no masked tokens?)")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """Mean of ``values`` (...,) over the entries ``mask`` (same shape, True / 1 = masked) selects, or over all.

    No host sync: a mask selecting nothing gives 0 (and a zero gradient) instead of an error.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"{name}: mask shape {tuple(mask.shape)} must be {tuple(values.shape)} (pred without last dim)")
    weight = mask.to(values.dtype)  # (...,)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def mim_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``-cosine_similarity(pred, target)`` averaged over the masked tokens, in fp32.

    pred, target: (..., C), e.g. (B, N, C) for every patch with ``mask`` (B, N) (True = masked), or (M, C) for
    the M masked tokens alone without ``mask``. fp32 because bf16 cosine similarities of near-parallel vectors
    lose the signal the loss is trying to climb.
    """
    _check_same_shape(pred, target, "mim_cosine_loss")
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # (...,)
    return -_masked_mean(cos, mask, "mim_cosine_loss")


def pixel_regression_loss(
    pred: torch.Tensor,
    target_patches: torch.Tensor,
    norm_pix: bool = True,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """MAE pixel loss: MSE per patch against (optionally per-patch normalised) target pixels, then averaged.

    pred, target_patches: (..., P) with P = p * p * C patch vectors (see :func:`patchify`). ``norm_pix``
    normalises each target patch by its own mean and (unbiased) variance, as MAE does. ``mask`` (same shape as
    ``pred`` without the last dim, 1 = masked) restricts the average to masked patches (a mask selecting none
    gives 0); without it every patch counts (pass only the masked patches). Computed in fp32.
    """
    _check_same_shape(pred, target_patches, "pixel_regression_loss")
    target = target_patches.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (...,)
    return _masked_mean(per_patch, mask, "pixel_regression_loss")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C), patches in row-major order, each vector (p, p, C)-ordered as MAE."""
    if images.ndim != 4:
        raise ValueError(f"patchify expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size {patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p * p * C) -> (B, C, h * p, w * p) for ``grid_size=(h, w)``."""
    grid_h, grid_w = grid_size
    expected = (grid_h * grid_w, patch_size * patch_size * channels)
    if patches.ndim != 3 or tuple(patches.shape[1:]) != expected:
        raise ValueError(f"unpatchify expects (B, {expected[0]}, {expected[1]}) patches, got {tuple(patches.shape)}")
    batch = patches.shape[0]
    x = patches.reshape(batch, grid_h, grid_w, patch_size, patch_size, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(batch, channels, grid_h * patch_size, grid_w * patch_size)
