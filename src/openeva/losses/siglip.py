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

from openeva.losses.contrastive import check_feature_pair, check_rank
from openeva.losses.distributed import all_gather_with_grad, check_process_group

__all__ = ["SigLipLoss", "sigmoid_pair_loss"]


def sigmoid_pair_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    with_positives: bool = True,
) -> torch.Tensor:
    """Sum of -logsigmoid(label * logit) over the (B, B') block, divided by B (the number of images).

    ``with_positives`` marks the diagonal as positive pairs (the process's own texts); otherwise every pair is
    a negative (texts from another process).
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B')
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.full_like(logits, -1.0)
    if with_positives:
        labels.fill_diagonal_(1.0)
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


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
    ):
        check_feature_pair(image_features, text_features)
        loss = sigmoid_pair_loss(image_features, text_features, logit_scale, logit_bias)
        if self.world_size > 1:
            check_process_group(self.rank, self.world_size)
            all_texts = all_gather_with_grad(text_features)  # (W * B, D)
            for other, texts in enumerate(all_texts.chunk(self.world_size)):
                if other != self.rank:
                    loss = loss + sigmoid_pair_loss(
                        image_features, texts, logit_scale, logit_bias, with_positives=False
                    )
        return {"contrastive_loss": loss} if output_dict else loss
