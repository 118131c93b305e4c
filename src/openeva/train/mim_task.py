"""EVA-02 masked image modelling as a Task on the one training engine (Fang et al., 2023, arXiv 2303.11331).

One method per paper step, as MAE writes it: ``masks`` (block-wise, from the batch or drawn here), ``encode``
(student tokens with masked patches swapped for the mask token), ``predict`` (``lm_head`` on masked tokens),
``targets`` (frozen CLIP teacher patch features on the same crop, or normalised pixels) and ``loss`` (negative
cosine similarity, or MAE's pixel MSE, over masked tokens only). The engine owns precision, optimiser,
schedule, checkpoints and logging.
"""

from __future__ import annotations

import torch
from torch import nn

from openeva.losses.mim import mim_cosine_loss, patchify, pixel_regression_loss
from openeva.models.mim import ClipTeacher, MIMStudent
from openeva.train.task import ParamGroupSpec, Task

TARGETS = ("clip", "pixel")


class MIMTask(Task):
    """Student regresses the teacher's features of masked patches.

    ``target="clip"`` needs ``teacher`` (a :class:`ClipTeacher`; ``student.target_dim`` must equal its feature
    dim); ``target="pixel"`` is the MAE baseline (``student.target_dim = patch**2 * 3``, ``norm_pix`` per-patch
    normalised targets). Batches are ``(images, [texts,] masks)`` as ``data.loader.MaskingCollate`` makes them
    (masks (B, h, w) or (B, N), True = masked); batches without masks get them from ``mask_generator``.
    The teacher lives inside the Task (frozen, eval mode) but is left out of its ``state_dict``: it is rebuilt
    from the run config, so checkpoints hold only what trains.
    """

    def __init__(
        self,
        student: MIMStudent,
        teacher: ClipTeacher | None = None,
        target: str = "clip",
        norm_pix: bool = True,
        mask_generator=None,
    ):
        super().__init__()
        if not isinstance(student, MIMStudent):
            raise ValueError(f"student must be a MIMStudent (openeva.models.mim.build_student), got "
                             f"{type(student).__name__}")
        if target not in TARGETS:
            raise ValueError(f"MIM target must be one of {TARGETS}, got {target!r}")
        if target == "clip":
            if teacher is None:
                raise ValueError("target='clip' needs a teacher (openeva.models.mim.build_teacher)")
            if teacher.target_dim != student.target_dim:
                raise ValueError(f"student lm_head outputs {student.target_dim} features but the teacher gives "
                                 f"{teacher.target_dim}; build the student with target_dim={teacher.target_dim}")
        else:
            pixels = student.cfg.patch_size ** 2 * student.cfg.in_chans
            if student.target_dim != pixels:
                raise ValueError(f"the pixel target needs target_dim = patch**2 * channels = {pixels}, "
                                 f"got {student.target_dim}")
            teacher = None
        self.student = student
        self.teacher = teacher
        self.target = target
        self.norm_pix = norm_pix
        self.mask_generator = mask_generator
        self._register_state_dict_hook(_drop_teacher_keys)
        self.register_load_state_dict_pre_hook(_teacher_keys_are_not_expected)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.student.cfg.grid_size

    # ------------------------------------------------------------------------------ one method per step
    def masks(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, H, W), mask (B, N) bool) from a batch, drawing masks when the batch has none."""
        if batch is None:
            raise ValueError("empty batch (every sample failed to load)")
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        images = batch[0]
        last = batch[-1] if len(batch) > 1 else None
        if isinstance(last, torch.Tensor) and last.dtype == torch.bool:
            mask = last
        elif self.mask_generator is not None:
            mask = torch.stack([self.mask_generator(None) for _ in range(images.shape[0])])  # (B, h, w)
        else:
            raise ValueError("the batch has no bool mask column and the task has no mask_generator "
                             "(use data.loader.MaskingCollate or pass mask_generator=)")
        h, w = self.grid_size
        if tuple(images.shape[-2:]) != tuple(self.student.cfg.img_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} px but the student expects "
                             f"{self.student.cfg.img_size}")
        if mask.shape[-2:] == (h, w) and mask.ndim == 3:
            mask = mask.flatten(1)  # (B, N)
        if tuple(mask.shape) != (images.shape[0], h * w):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit batch {images.shape[0]} on the "
                             f"student's {h}x{w} patch grid")
        if not mask.any():
            raise ValueError("the masks select no patches")
        return images, mask.to(images.device)

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> normalised student tokens (B, 1 + N, D)."""
        return self.student.forward_features(images, mask)

    def predict(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) -> (M, C) predictions for the M masked patches."""
        return self.student.predict(tokens, mask)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, C) per-patch targets on the student's grid (no gradient)."""
        if self.target == "clip":
            return self.teacher(images, self.grid_size)  # (B, N, C)
        return patchify(images.float(), self.student.cfg.patch_size)  # (B, N, p*p*3)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Masked-token predictions (M, C) vs their targets (M, C)."""
        if self.target == "clip":
            return mim_cosine_loss(pred, target)
        return pixel_regression_loss(pred, target, norm_pix=self.norm_pix)

    # ----------------------------------------------------------------------------------- the contract
    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        images, mask = self.masks(batch)
        pred = self.predict(self.encode(images, mask), mask)  # (M, C)
        target = self.targets(images)[mask]  # (M, C)
        loss = self.loss(pred, target)
        metrics = {"loss": loss.detach(), "mask_ratio": mask.float().mean()}
        if self.target == "clip":
            metrics["cos_sim"] = -loss.detach()
        return loss, metrics

    def param_group_specs(self) -> list[ParamGroupSpec]:
        return [ParamGroupSpec(module=self.student, prefix="student")]

    def train(self, mode: bool = True) -> "MIMTask":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self


def _drop_teacher_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: the frozen teacher is rebuilt from the config, so checkpoints leave it out."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def _teacher_keys_are_not_expected(module, state_dict, prefix, local_metadata, strict, missing_keys,
                                   unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: lets a strict load of a checkpoint without teacher keys succeed by
    supplying the teacher's current tensors (they are frozen, so this is a no-op copy)."""
    teacher = getattr(module, "teacher", None)
    if teacher is None:
        return
    for name, tensor in teacher.state_dict().items():
        state_dict.setdefault(f"{prefix}teacher.{name}", tensor)
