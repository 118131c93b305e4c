"""Semantic segmentation mIoU of any per-pixel classifier: ``predict(inputs) -> (B, L, H, W)`` logits.

Protocol as mmseg reports it: predictions (argmax, or the caller's ``to_labels``) and truth masks accumulate
one L x L confusion matrix over the dataset (row = truth, column = prediction; ``ignore_index`` pixels left out);
IoU per class = TP / (TP + FP + FN), mIoU the mean over classes present in the truth or the prediction
(:func:`openeva.metrics.iou_metrics`). ``predict`` is a segmentation model or a closure over one (the
open-vocabulary segmenter of :mod:`openeva.dense`), so this module needs nothing above it.

Rank rule: each rank scores its part; the confusion matrices (and loss sums) are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from openeva.evaluators.base import Batching, rank_batches
from openeva.evaluators.distributed import all_sum
from openeva.metrics import confusion, iou_metrics
from openeva.runtime import autocast, dtype_of

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Segmented:
    """``dataset[i] -> (input, mask (H, W) long) | None`` (or batches of them) with labels 0..num_labels-1."""

    dataset: Any
    num_labels: int

    def __post_init__(self):
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ValueError(f"segmentation needs at least 2 labels (background + 1), got {self.num_labels!r}")


@dataclass(frozen=True)
class MIoUOptions:
    """``ignore_index``: mask value left out of the scores; ``loss``: also the mean per-image cross-entropy of
    the logits (when they are the model's class logits, as in training)."""

    ignore_index: int = IGNORE_INDEX
    loss: bool = False


@dataclass(frozen=True)
class MIoU:
    """mIoU, foreground mIoU and pixel accuracy (plus ``loss`` with ``options.loss``).

    ``to_labels`` turns (B, L', H, W) logits into (B, H, W) labels (default: argmax over L')."""

    options: MIoUOptions = field(default_factory=MIoUOptions)
    batching: Batching = field(default_factory=Batching)
    to_labels: Callable[[torch.Tensor], torch.Tensor] | None = None
    name: str = "miou"

    @torch.no_grad()
    def confusion(self, predict, data: Segmented, *, device="cpu", precision: str = "fp32",
                  group=None) -> tuple[torch.Tensor, float, int]:
        """(L, L) confusion summed over ranks, the summed per-image loss, and the number of images."""
        dtype_of(precision)
        num_labels = data.num_labels
        conf = torch.zeros(num_labels, num_labels, dtype=torch.long)
        sums = torch.zeros(2, dtype=torch.float64)  # loss * images, images
        for columns, _ in rank_batches(data.dataset, self.batching, group, "segmenting"):
            inputs, masks = columns[0], columns[1].long()
            inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs
            with autocast(precision, device):
                logits = predict(inputs).float()  # (B, L', H, W)
            if self.options.loss:
                ce = F.cross_entropy(logits, masks.to(logits.device), ignore_index=self.options.ignore_index)
                sums[0] += float(ce) * len(masks)
            sums[1] += len(masks)
            labels = logits.argmax(1) if self.to_labels is None else self.to_labels(logits)  # (B, H, W)
            for pred, truth in zip(labels.cpu(), masks.cpu()):
                conf += confusion(pred, truth, num_labels, self.options.ignore_index)
        sums = all_sum(sums, group)
        return all_sum(conf, group), float(sums[0]), int(sums[1])

    def run(self, model, data: Segmented, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        was_training = getattr(model, "training", None)
        if was_training is not None:
            model.eval()
        try:
            conf, loss_sum, n = self.confusion(model, data, device=device, precision=precision, group=group)
        finally:
            if was_training is not None:
                model.train(was_training)
        metrics, _ = iou_metrics(conf)
        if self.options.loss:
            metrics["loss"] = loss_sum / max(n, 1)
        return metrics
