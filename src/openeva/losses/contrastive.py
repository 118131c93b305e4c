"""Softmax contrastive (CLIP) loss, open_clip-compatible, with an optional tiled (Inf-CL) mode.

Radford et al. 2021 (CLIP), arXiv 2103.00020; EVA-CLIP trains with local loss + gather-with-grad
(arXiv 2303.15389); the tiled mode follows Inf-CL (arXiv 2410.17243), see :mod:`openeva.losses.tiled`.

``ClipLoss`` is called as open_clip's: ``loss(image_features, text_features, logit_scale)`` with normalized
(B, D) features and the already-exponentiated scale. The cross-process semantics (``local_loss``,
``gather_with_grad``) are open_clip's, so a user's recipe means the same thing here.

Tiled mode across processes: the other side's features are all-gathered ((W * B, D), linear in the batch),
each process computes the LSE of its rows tile by tile, and the backward of the gather sums the gradients for
the gathered features back to their owners (a reduce-scatter). No ring (isend/irecv overlap) is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openeva.losses.distributed import gather_features, gather_mask
from openeva.losses.tiled import as_scale, positive_logits, tiled_clip_loss, tiled_cross_entropy, tiled_logsumexp

__all__ = ["ClipLoss"]


def check_feature_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise ValueError unless both are non-empty (B, D) tensors of the same shape."""
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            f"expected (batch, dim) features, got image {tuple(image_features.shape)} "
            f"and text {tuple(text_features.shape)}"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must have the same shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if image_features.shape[0] == 0:
        raise ValueError("empty batch: features have 0 rows")


def check_valid(valid: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """A (B,) bool mask of the rows of ``features`` that are samples (the rest pad a fixed-shape batch)."""
    if valid.shape != features.shape[:1] or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a ({features.shape[0]},) bool tensor, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    return valid


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


class ClipLoss(nn.Module):
    """Symmetric image<->text softmax cross-entropy, averaged over the two directions.

    Args:
        local_loss: with several processes, each computes the loss of its own rows against all gathered
            columns (B_local x W*B) instead of the full global matrix.
        gather_with_grad: gradients flow through the all-gather to the other processes' features.
        cache_labels: keep the target indices between calls (dense mode).
        rank, world_size: this process's place in the default process group (passed in, never read globally).
        tiled: never materialise the logits matrix (Inf-CL); same value and gradients, memory linear in B.
        tile_size: rows/columns per tile in tiled mode.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = True,
        rank: int = 0,
        world_size: int = 1,
        tiled: bool = False,
        tile_size: int = 1024,
    ) -> None:
        super().__init__()
        check_rank(rank, world_size)
        if tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.tiled = tiled
        self.tile_size = tile_size
        self._labels: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, rank={self.rank}, "
            f"world_size={self.world_size}, tiled={self.tiled}, tile_size={self.tile_size}"
        )

    def _targets(self, device: torch.device, num_rows: int, offset: int) -> torch.Tensor:
        key = (device, num_rows, offset)
        labels = self._labels.get(key)
        if labels is None:
            labels = torch.arange(offset, offset + num_rows, device=device, dtype=torch.long)
            if self.cache_labels:
                self._labels = {key: labels}
        return labels

    def _gather(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """-> (query images, query texts, all images, all texts, index of the first local row)."""
        if self.world_size == 1:
            return image_features, text_features, image_features, text_features, 0
        all_images, all_texts = gather_features(
            image_features, text_features, self.local_loss, self.gather_with_grad, self.rank, self.world_size
        )  # (W * B, D) each
        if self.local_loss:
            return image_features, text_features, all_images, all_texts, self.rank * image_features.shape[0]
        return all_images, all_texts, all_images, all_texts, 0

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        output_dict: bool = False,
        valid: torch.Tensor | None = None,
    ):
        """(B, D), (B, D), scale -> scalar loss (or ``{"contrastive_loss": loss}``).

        ``logit_bias`` exists for open_clip signature compatibility; a constant added to every logit does not
        change a softmax cross-entropy, so it only enters the dense computation (where it cancels).
        ``valid`` (B,) bool marks the rows that are samples in a padded fixed-shape batch: the others are neither
        rows nor columns of the loss on any rank, which averages over the valid rows of all ranks.
        """
        check_feature_pair(image_features, text_features)
        q_images, q_texts, all_images, all_texts, offset = self._gather(image_features, text_features)
        same_pair = q_images is all_images  # both directions read one (N, N) matrix
        if valid is not None:
            loss = self._masked(q_images, q_texts, all_images, all_texts, offset, logit_scale, logit_bias,
                                check_valid(valid, image_features))
        elif self.tiled:
            if same_pair:
                loss = tiled_clip_loss(all_images, all_texts, logit_scale, self.tile_size)
            else:
                loss = (
                    tiled_cross_entropy(q_images, all_texts, logit_scale, offset, self.tile_size)
                    + tiled_cross_entropy(q_texts, all_images, logit_scale, offset, self.tile_size)
                ) / 2
        else:
            logits_per_image = logit_scale * q_images @ all_texts.T  # (B_q, N)
            if same_pair:
                logits_per_text = logits_per_image.T
            else:
                logits_per_text = logit_scale * q_texts @ all_images.T  # (B_q, N)
            if logit_bias is not None:
                logits_per_image = logits_per_image + logit_bias
                logits_per_text = logits_per_text + logit_bias
            labels = self._targets(image_features.device, logits_per_image.shape[0], offset)
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss

    def _masked(self, q_images, q_texts, all_images, all_texts, offset, logit_scale, logit_bias, valid):
        """The loss over the valid rows only, without a host sync (the counts stay on the device)."""
        all_valid = gather_mask(valid, self.rank, self.world_size)  # (N,)
        same_pair = q_images is all_images
        q_valid = all_valid if same_pair else valid  # (B_q,)
        # mean over every rank's valid rows; with local rows DDP's average over ranks divides the W back
        norm = all_valid.sum().clamp(min=1) / (1 if same_pair else self.world_size)
        if self.tiled:
            scale = as_scale(logit_scale, q_images)
            if same_pair:
                row_lse, col_lse = tiled_logsumexp(all_images, all_texts, logit_scale, self.tile_size, True,
                                                   all_valid, all_valid)  # (N,), (N,)
                pos = positive_logits(all_images, all_texts, scale)
                per_row = (row_lse - pos) + (col_lse - pos)  # (N,)
            else:
                rows = slice(offset, offset + q_images.shape[0])
                img_lse, _ = tiled_logsumexp(q_images, all_texts, logit_scale, self.tile_size, False, valid, all_valid)
                txt_lse, _ = tiled_logsumexp(q_texts, all_images, logit_scale, self.tile_size, False, valid, all_valid)
                per_row = (img_lse - positive_logits(q_images, all_texts[rows], scale)
                           + txt_lse - positive_logits(q_texts, all_images[rows], scale))  # (B,)
        else:
            logits_per_image = logit_scale * q_images @ all_texts.T  # (B_q, N)
            logits_per_text = logits_per_image.T if same_pair else logit_scale * q_texts @ all_images.T
            if logit_bias is not None:
                logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
            low = torch.finfo(logits_per_image.dtype).min  # a padding column takes no probability
            labels = self._targets(q_images.device, logits_per_image.shape[0], offset)
            per_row = sum(F.cross_entropy(logits.masked_fill(~all_valid[None, :], low), labels, reduction="none")
                          for logits in (logits_per_image, logits_per_text))  # (B_q,)
        return torch.where(q_valid, per_row, 0).sum() / (2 * norm)
