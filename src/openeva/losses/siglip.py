"""Sigmoid image-text loss (SigLIP, Zhai et al. 2023, arXiv 2303.15343).

Every (image, text) pair is an independent binary problem: label +1 on the diagonal, -1 elsewhere, loss
``-sum(logsigmoid(label * (s * x @ y.T + b))) / B``. With several processes each one adds the negatives-only
term of its images against every other process's texts. The texts are all-gathered (with gradient) rather
than passed around a ring: simpler, same value and gradients as open_clip's ``SigLipLoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openeva.losses.contrastive import check_feature_pair, check_rank, check_valid
from openeva.losses.distributed import all_gather_with_grad, check_process_group, gather_mask

__all__ = ["SigLipLoss", "sigmoid_pair_loss"]


def sigmoid_pair_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    with_positives: bool = True,
    pair_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of -logsigmoid(label * logit) over the (B, B') block, divided by B (the number of images).

    ``with_positives`` marks the diagonal as positive pairs (the process's own texts); otherwise every pair is
    a negative (texts from another process). ``pair_mask`` (B, B') bool keeps only those pairs, and the sum is
    then returned undivided (the caller divides by the valid count).
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B')
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.full_like(logits, -1.0)
    if with_positives:
        labels.fill_diagonal_(1.0)
    terms = -F.logsigmoid(labels * logits)  # (B, B')
    if pair_mask is not None:
        return torch.where(pair_mask, terms, 0).sum()
    return terms.sum() / image_features.shape[0]


class SigLipLoss(nn.Module):
    """SigLIP loss, called as open_clip's: ``loss(image_features, text_features, logit_scale, logit_bias)``.

    ``logit_scale`` is the exponentiated scale; features are expected normalized (B, D).
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        check_rank(rank, world_size)
        self.rank = rank
        self.world_size = world_size

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}"

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        output_dict: bool = False,
        valid: torch.Tensor | None = None,
    ):
        """``valid`` (B,) bool: the rows that are samples in a padded fixed-shape batch; pairs with a padding
        row are left out and the loss is divided by the valid images of all ranks (over ``world_size``)."""
        check_feature_pair(image_features, text_features)
        masks = [None] * self.world_size
        if valid is not None:
            all_valid = gather_mask(check_valid(valid, image_features), self.rank, self.world_size)  # (W * B,)
            masks = [valid[:, None] & v[None, :] for v in all_valid.chunk(self.world_size)]  # (B, B) each
        loss = sigmoid_pair_loss(image_features, text_features, logit_scale, logit_bias, pair_mask=masks[self.rank])
        if self.world_size > 1:
            check_process_group(self.rank, self.world_size)
            all_texts = all_gather_with_grad(text_features)  # (W * B, D)
            for other, texts in enumerate(all_texts.chunk(self.world_size)):
                if other != self.rank:
                    loss = loss + sigmoid_pair_loss(
                        image_features, texts, logit_scale, logit_bias, with_positives=False, pair_mask=masks[other]
                    )
        if valid is not None:
            loss = loss * self.world_size / all_valid.sum().clamp(min=1)
        return {"contrastive_loss": loss} if output_dict else loss
