"""EVA-02 masked image modelling (MIM): the student and the frozen CLIP teacher that makes its targets.

EVA-02 (Fang et al., 2023, arXiv 2303.11331, section 2) pretrains a plain ViT by regressing, for every masked
patch, the features a frozen CLIP vision tower gives that patch when it sees the whole image:

* :class:`MIMStudent` is an :class:`~openeva.models.vit.EVAViT` (so the pretrained backbone is the class that is
  served) with a learned ``mask_token``, its final LayerNorm named ``norm`` (EVA's MIM layout) and an ``lm_head``
  (D -> C) applied to masked tokens only.
* :class:`ClipTeacher` wraps a CLIP vision tower, frozen and in eval mode. Target = tower tokens after its final
  norm, CLS dropped, the CLIP projection ``head`` applied per token: (B, N_teacher, C). When the teacher's patch
  grid differs from the student's (patch 16 vs 14, another resolution) the (B, C, h, w) target map is resampled
  bilinearly to the student grid; projection and bilinear resampling are both linear, so resampling after the
  projection equals resampling before it, at less cost when C < D.

The saved student (``openeva.save_model(student, dir)``, as every training checkpoint and ``RUN/final``) is a plain backbone checkpoint in EVA's MIM layout: every backbone
tensor plus ``norm``, ``mask_token`` and ``lm_head``, with a ``config.json`` describing the plain mean-pooling
backbone. ``create_model(dir)`` / ``create_model(name, pretrained=dir, num_classes=K)`` then load it as a
classifier (``norm`` -> ``fc_norm``, MIM-only keys dropped) and CLIP training's ``model.pretrained_image=dir``
(:func:`openeva.factory.load_tower`) as a CLIP vision tower (``norm`` -> ``norm``, ``head`` new).

This module holds the modules only; :mod:`openeva.factory` builds them (``build_student``, ``build_teacher``)
and loads their weights.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from openeva.runtime import autocast, dtype_of
from openeva.models.vit import EVAViT, ViTConfig

TEACHER_PRECISIONS = ("fp32", "bf16")


class MIMStudent(EVAViT):
    """EVA-02 MIM student: backbone with ``mask_token``, final ``norm`` and ``lm_head`` on masked tokens.

    ``cfg`` is any backbone config; the student forces ``mask_token=True``, ``global_pool="token"`` (so the final
    LayerNorm is ``norm`` and ``forward_features`` returns normalised tokens) and no classifier head.
    ``target_dim`` is the teacher's feature dim C (or p * p * 3 for the pixel target).
    """

    def __init__(self, cfg: ViTConfig, target_dim: int):
        if target_dim <= 0:
            raise ValueError(f"target_dim must be positive, got {target_dim}")
        self.target_dim = target_dim
        super().__init__(cfg.replace(mask_token=True, global_pool="token", num_classes=0, patch_drop_rate=0.0))
        self.lm_head = nn.Linear(self.embed_dim, target_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The backbone's EVA-02 MIM init; ``lm_head`` Xavier-normal like every other Linear (EVA-02 code)."""
        super().reset_parameters()
        if getattr(self, "lm_head", None) is not None:
            nn.init.xavier_normal_(self.lm_head.weight)
            nn.init.zeros_(self.lm_head.bias)

    def layer_id(self, name: str) -> int:
        return self.cfg.depth + 1 if name.startswith("lm_head") else super().layer_id(name)

    def predict(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + N, D) and mask (B, N) -> predictions (M, C) for the M masked patches.

        Masked patches are taken in row-major (batch, patch) order, the order ``targets[mask]`` uses.
        """
        patches = tokens[:, self.num_prefix_tokens:]  # (B, N, D)
        return self.lm_head(patches[mask])  # (M, C)

    def predict_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + N, D) -> predictions (B, N, C) for every patch.

        What training uses: the loss weights the masked patches (``mim_cosine_loss(..., mask=)``), so the shapes
        are static and no count is read on the host, whatever each image's number of masked patches (BEiT's
        masks vary). ``lm_head`` on the visible patches as well costs little next to the blocks.
        """
        return self.lm_head(tokens[:, self.num_prefix_tokens:])  # (B, N, C)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) + bool mask (B, N), True = masked -> predictions (M, C) for the masked patches."""
        return self.predict(self.forward_features(images, mask), mask)

    def export_config(self) -> ViTConfig:
        """The config saved with these weights: the plain backbone they initialise (see :func:`plain_backbone`)."""
        return plain_backbone(self.cfg)


def plain_backbone(cfg: ViTConfig) -> ViTConfig:
    """A student config -> the plain backbone its weights initialise: mean pooling + ``fc_norm`` (EVA-02
    fine-tuning), no mask token, no MIM-only training settings (drop path, patch-embed gradient scale)."""
    return cfg.replace(mask_token=False, global_pool="avg", num_classes=0, drop_path_rate=0.0,
                       patch_embed_grad_scale=1.0, patch_drop_rate=0.0)


class ClipTeacher(nn.Module):
    """A frozen CLIP vision tower turned into per-patch MIM targets (B, N_student, C).

    ``visual``: the tower (an ``EVAViT``, e.g. ``CLIP.visual``); its parameters are frozen and cast to
    ``precision`` ("bf16" halves memory and is faster on GPUs and CPUs with native bf16, but is emulated and
    several times slower on AVX2-only CPUs; targets come back fp32). The choice is the caller's
    (:func:`openeva.factory.build_teacher` and the MIM task resolve "auto" by the hardware).
    ``input_mean``/``input_std``: the normalisation of the images it is given; when they differ from the
    teacher's own ``mean``/``std`` the images are re-normalised for it.
    """

    def __init__(
        self,
        visual: EVAViT,
        precision: str = "fp32",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        input_mean: tuple[float, float, float] | None = None,
        input_std: tuple[float, float, float] | None = None,
    ):
        super().__init__()
        if not isinstance(visual, EVAViT):
            raise ValueError(f"teacher must be an EVAViT vision tower, got {type(visual).__name__}")
        if not isinstance(visual.head, nn.Linear):
            raise ValueError("teacher tower has no projection head; use a CLIP model's vision tower")
        if precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher precision must be one of {sorted(TEACHER_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.visual = visual.to(dtype_of(precision)).requires_grad_(False).eval()
        self._renorm = None
        if None not in (mean, std, input_mean, input_std) and (tuple(mean), tuple(std)) != (
                tuple(input_mean), tuple(input_std)):
            self._renorm = [torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                            for v in (input_mean, input_std, mean, std)]

    @property
    def target_dim(self) -> int:
        return self.visual.head.out_features

    @property
    def img_size(self) -> tuple[int, int]:
        return self.visual.cfg.img_size

    def train(self, mode: bool = True) -> "ClipTeacher":
        """The teacher stays in eval mode (no dropout, drop path or patch dropout) whatever its owner does."""
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Student images (B, 3, H, W) -> the same crop at the teacher's size and normalisation."""
        if self._renorm is not None:
            in_mean, in_std, mean, std = (t.to(images.device) for t in self._renorm)
            images = (images.float() * in_std + in_mean - mean) / std
        if tuple(images.shape[-2:]) != self.img_size:
            images = F.interpolate(images.float(), size=self.img_size, mode="bicubic", align_corners=False,
                                   antialias=True)  # (B, 3, H_t, W_t)
        return images

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher targets on its own grid: (B, N_teacher, C) = head(final_norm(tokens))[:, patches]."""
        visual = self.visual
        x = self._prepare(images).to(dtype_of(self.precision))
        with torch.no_grad(), autocast(self.precision, x.device):
            tokens = visual.forward_features(x)  # (B, 1 + N_t, D_t), final norm applied for token-pool towers
            patches = tokens[:, visual.num_prefix_tokens:]  # (B, N_t, D_t)
            if visual.cfg.global_pool == "avg":  # a mean-pooling tower keeps its final LN in fc_norm
                patches = visual.fc_norm(patches)
            return visual.head(patches).float()  # (B, N_t, C)

    def forward(self, images: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Images (B, 3, H, W) -> targets (B, h * w, C) on the student's ``grid_size`` (h, w)."""
        target = self.patch_features(images)  # (B, N_t, C)
        grid_t = self.visual.patch_embed.grid_size(self.img_size)
        return resample_target_grid(target, grid_t, tuple(grid_size))


def resample_target_grid(
    target: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Per-patch targets (B, h * w, C) on ``grid`` -> (B, h' * w', C) on ``new_grid``, bilinear on (B, C, h, w)."""
    B, N, C = target.shape
    if N != grid[0] * grid[1]:
        raise ValueError(f"target has {N} patches, not the {grid[0]}x{grid[1]} grid")
    if tuple(grid) == tuple(new_grid):
        return target
    fmap = target.transpose(1, 2).reshape(B, C, *grid)  # (B, C, h, w)
    fmap = F.interpolate(fmap, size=tuple(new_grid), mode="bilinear", align_corners=False)  # (B, C, h', w')
    return fmap.flatten(2).transpose(1, 2)  # (B, h' * w', C)
