"""Patch embedding (a strided convolution) and resampling of its kernel to another patch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        # OpenAI CLIP's ``conv1`` has no bias; EVA's and timm's patch kernels have one
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = image_hw
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
        return h // p, w // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H, W)
        return x.flatten(2).transpose(1, 2)  # (B, H*W, D)


def resample_patch_kernel(weight: torch.Tensor, new_size: int, rescale: bool = False) -> torch.Tensor:
    """Bicubic resample of a (D, C, p, p) kernel to (D, C, new, new).

    Used for EVA-CLIP B/16, whose tower starts from the patch-14 MIM model; EVA's own conversion interpolates
    without rescaling, which is the default here. ``rescale=True`` keeps each filter's response to a flat patch.
    """
    old = weight.shape[-1]
    if old == new_size:
        return weight
    out = F.interpolate(weight.float(), size=(new_size, new_size), mode="bicubic", align_corners=False)
    if rescale:
        out = out * (old * old) / (new_size * new_size)  # a patch of constant colour gives the same response
    return out.to(weight.dtype)
