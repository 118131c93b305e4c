"""ViTDet's simple feature pyramid over an EVA-02 ViT (Li et al., 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection"; EVA-02's detection and segmentation setups use it).

The plain ViT's last patch map (stride = patch size) is turned into four maps by deconvolution (up) or max
pooling (down), each followed by a 1x1 and a 3x3 convolution with channel LayerNorm, returning the
``{"p2": stride 4, "p3": 8, "p4": 16, "p5": 32}`` dict detectron2's FPN heads and mmdet's necks consume
(``output_shape()`` gives :class:`ShapeSpec` objects with detectron2's ``.channels`` / ``.stride`` fields, and
``size_divisibility`` / ``padding_constraints`` what detectron2 pads inputs by).

Patch sizes that are not a power of 2 (EVA-02's patch 14): 2x steps cannot reach stride 4 from 14, so the ViT map
is first resampled bilinearly to the grid of the nearest power-of-2 stride (14 -> 16: a 16x16 map of a 224 px
input becomes 14x14), as ViTDet ports of patch-14 backbones do; the deconvs / pooling then work from there.
EVA-02's own detection code instead loads the patch-14 weights as a patch-16 ViT
(``create_model(name, pretrained, patch_size=16)``: the checkpoint loader resamples the patch kernel and the
position table), which needs no resampling here.

Attention inside the backbone: ``window_size=None`` runs the ViT as it was pretrained (global attention over
all patches, via ``forward_intermediates``); a window size runs ViTDet's layout: non-overlapping windows in
every block except ``global_blocks`` (e.g. 2, 5, 8, 11 of a 12-block ViT), with the class token dropped and
RoPE built on the window's grid (EVA-02's detectron2 backbone does the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEVEL_NAMES = {4: "p2", 8: "p3", 16: "p4", 32: "p5", 64: "p6"}


@dataclass(frozen=True)
class ShapeSpec:
    """One pyramid level's shape, duck-typed as detectron2's ``ShapeSpec`` (``.channels``, ``.stride``; ``height``
    / ``width`` unknown until an input is seen) without depending on detectron2. ``spec["stride"]`` also works
    (the plain-dict form ``output_shape()`` returned before)."""

    channels: int
    stride: int
    height: int | None = None
    width: int | None = None

    def __getitem__(self, key: str):
        if key not in ("channels", "stride", "height", "width"):
            raise KeyError(key)
        return getattr(self, key)


def map_stride(patch: int) -> int:
    """The stride the pyramid builds from: the patch size when it is a power of 2, else the nearest power of 2
    (on a log scale: 14 -> 16, 12 -> 16, 10 -> 8), to which the ViT map is resampled."""
    if patch & (patch - 1) == 0:
        return patch
    return 2 ** round(math.log2(patch))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


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
        base = map_stride(patch)  # == patch, or the power of 2 the ViT map is resampled to (14 -> 16)
        strides = tuple(int(s) for s in strides)
        if not strides:
            raise ValueError("strides must name at least one level, e.g. (4, 8, 16, 32)")
        for s in strides:
            scale = base / s
            if s not in LEVEL_NAMES or not (0.0625 <= scale <= 8) or 2 ** round(math.log2(scale)) != scale:
                raise ValueError(f"stride {s} is not reachable from patch size {patch} (map stride {base}) by 2x "
                                 f"steps (strides must be in {sorted(LEVEL_NAMES)}, at most 16x below or 8x above "
                                 "the map stride)")
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
        self.patch_size, self.map_stride = patch, base
        D = backbone.embed_dim
        self.stages = nn.ModuleList()
        for s in strides:
            resample, width = _scale_stage(D, base / s)
            self.stages.append(nn.Sequential(
                resample,
                nn.Conv2d(width, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ))

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{"p2": ShapeSpec(channels=C, stride=4), ...}``, what detectron2's heads read from a backbone."""
        return {LEVEL_NAMES[s]: ShapeSpec(channels=self.out_channels, stride=s) for s in self.strides}

    @property
    def size_divisibility(self) -> int:
        """Input sides should be multiples of this (detectron2 pads batches to it): the ViT needs whole patches
        and the coarsest level whole cells, so lcm(patch, largest stride): 32 for patch 16, 224 for patch 14.
        Window attention pads the token grid to whole windows itself (as ViTDet), so adds nothing."""
        return math.lcm(self.patch_size, max(self.strides))

    @property
    def padding_constraints(self) -> dict[str, int]:
        """detectron2's ``Backbone.padding_constraints`` (no square padding required)."""
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def backbone_map(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's last patch map (B, D, H/p, W/p), global or window attention."""
        if self.window_size is None:
            return self.backbone.forward_intermediates(images, indices=1)[0]
        vit = self.backbone
        # a map needs every patch: no FLIP patch dropout here even in train mode (forward_intermediates does the
        # same); only the ViT's own flag is lowered, so drop path and dropout in the blocks still train
        was_training, vit.training = vit.training, False
        try:
            x, _, grid = vit._embed(images, None)
        finally:
            vit.training = was_training
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

    def stride_map(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT map on the ``map_stride`` grid: (B, D, H/p, W/p), resampled bilinearly to
        (B, D, H/s, W/s) (sides rounded to the nearest cell) when the patch size is not a power of 2."""
        top = self.backbone_map(images)  # (B, D, H/p, W/p)
        if self.map_stride == self.patch_size:
            return top
        H, W = images.shape[-2:]
        size = (max(1, _round_half_up(H / self.map_stride)), max(1, _round_half_up(W / self.map_stride)))
        return F.interpolate(top, size=size, mode="bilinear", align_corners=False)  # (B, D, H/s, W/s)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        top = self.stride_map(images)  # (B, D, H/s, W/s), s = map_stride
        return {LEVEL_NAMES[s]: stage(top) for s, stage in zip(self.strides, self.stages)}
