"""ViTDet's simple feature pyramid over an EVA-02 ViT (Li et al., 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection"; EVA-02's detection and segmentation setups use it).

The plain ViT's last patch map (stride = patch size) is turned into four maps by deconvolution (up) or max
pooling (down), each followed by a 1x1 and a 3x3 convolution with channel LayerNorm, returning the
``{"p2": stride 4, "p3": 8, "p4": 16, "p5": 32}`` dict detectron2's FPN heads and mmdet's necks consume
(``output_shape()`` gives channels and strides as detectron2's ``ShapeSpec`` fields).

Attention inside the backbone: ``window_size=None`` runs the ViT as it was pretrained (global attention over
all patches, via ``forward_intermediates``); a window size runs ViTDet's layout: non-overlapping windows in
every block except ``global_blocks`` (e.g. 2, 5, 8, 11 of a 12-block ViT), with the class token dropped and
RoPE built on the window's grid (EVA-02's detectron2 backbone does the same).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEVEL_NAMES = {4: "p2", 8: "p3", 16: "p4", 32: "p5", 64: "p6"}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (ViTDet's ``LayerNorm`` for conv features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _scale_stage(dim: int, scale: float) -> tuple[nn.Module, int]:
    """Resampling of a (B, D, H, W) map by ``scale`` (a power of 2): stacked 2x deconvs up, max pool down."""
    if scale >= 1:
        n_up = int(round(math.log2(scale)))
        layers, width = [], dim
        for i in range(n_up):
            out = max(width // 2, 1)
            layers.append(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2))
            if i < n_up - 1:
                layers += [LayerNorm2d(out), nn.GELU()]
            width = out
        return (nn.Sequential(*layers) if layers else nn.Identity()), width
    k = int(round(1 / scale))
    return nn.MaxPool2d(kernel_size=k, stride=k), dim


def _window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, D) -> (B * nW, ws * ws, D) windows, zero-padding H and W up to multiples of ws."""
    B, H, W, D = x.shape
    ph, pw = (ws - H % ws) % ws, (ws - W % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, D), (Hp, Wp)


def _window_unpartition(x: torch.Tensor, ws: int, padded: tuple[int, int], hw: tuple[int, int], B: int):
    Hp, Wp = padded
    x = x.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, : hw[0], : hw[1]].contiguous()  # (B, H, W, D)


class SimpleFeaturePyramid(nn.Module):
    """EVA ViT backbone + ViTDet simple pyramid: images (B, 3, H, W) -> {"p2".."p5": (B, C, H/s, W/s)}."""

    def __init__(self, backbone: nn.Module, out_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32),
                 window_size: int | None = None, global_blocks: Sequence[int] = ()):
        super().__init__()
        patch = backbone.cfg.patch_size
        strides = tuple(int(s) for s in strides)
        for s in strides:
            scale = patch / s
            if s not in LEVEL_NAMES or not (0.0625 <= scale <= 8) or 2 ** round(math.log2(scale)) != scale:
                raise ValueError(f"stride {s} is not reachable from patch size {patch} by 2x steps (strides "
                                 f"must be in {sorted(LEVEL_NAMES)} and patch/stride a power of 2)")
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        depth = backbone.cfg.depth
        bad = [b for b in global_blocks if not -depth <= b < depth]
        if bad:
            raise ValueError(f"global_blocks {bad} out of range for a {depth}-block backbone")
        self.backbone = backbone
        self.window_size = window_size
        self.global_blocks = frozenset(b % depth for b in global_blocks)
        self.strides = strides
        self.out_channels = out_channels
        D = backbone.embed_dim
        self.stages = nn.ModuleList()
        for s in strides:
            resample, width = _scale_stage(D, patch / s)
            self.stages.append(nn.Sequential(
                resample,
                nn.Conv2d(width, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ))

    def output_shape(self) -> dict[str, dict[str, int]]:
        """``{"p2": {"channels": C, "stride": 4}, ...}`` (detectron2 ``ShapeSpec`` fields)."""
        return {LEVEL_NAMES[s]: {"channels": self.out_channels, "stride": s} for s in self.strides}

    def backbone_map(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's last patch map (B, D, H/p, W/p), global or window attention."""
        if self.window_size is None:
            return self.backbone.forward_intermediates(images, indices=1)[0]
        vit = self.backbone
        x, _, grid = vit._embed(images, None)
        x = x[:, vit.num_prefix_tokens:]  # (B, N, D): ViTDet drops the class token
        B, D = x.shape[0], x.shape[-1]
        ws = self.window_size
        rope_global = vit.rope(grid, 0, x.device) if vit.rope is not None else None
        rope_window = vit.rope((ws, ws), 0, x.device) if vit.rope is not None else None
        for i, blk in enumerate(vit.blocks):
            if i in self.global_blocks:
                x = vit._run_block(blk, x, rope_global)
                continue
            win, padded = _window_partition(x.view(B, *grid, D), ws)  # (B * nW, ws * ws, D)
            win = vit._run_block(blk, win, rope_window)
            x = _window_unpartition(win, ws, padded, grid, B).view(B, -1, D)
        return x.transpose(1, 2).reshape(B, D, *grid)  # (B, D, H, W)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        top = self.backbone_map(images)  # (B, D, H/p, W/p)
        return {LEVEL_NAMES[s]: stage(top) for s, stage in zip(self.strides, self.stages)}
