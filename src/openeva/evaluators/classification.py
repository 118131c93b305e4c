"""Classification evaluators whose rank rule is "score your part, sum the counts": a classifier's own head
(:class:`Accuracy`, fine-tuning validation) and CLIP zero-shot classification (:class:`ZeroShot`).

Counts are integers (samples, top-1 hits, top-k hits, per-class hits and totals), so the metrics of N ranks
equal one process's exactly; top-k is top-min(5, C) and the mean per-class recall leaves out classes without
a sample, as :func:`openeva.metrics.classification_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from openeva.evaluators.base import Batching, Labelled, rank_batches
from openeva.evaluators.distributed import all_sum
from openeva.evaluators.features import image_features
from openeva.evaluators.text import TEXT_BATCH_SIZE, build_zeroshot_classifier
from openeva.metrics import zeroshot_logits
from openeva.runtime import autocast, dtype_of

DEFAULT_TEMPLATES = ("a photo of a {c}.",)


def classification_counts(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) scores, (N,) labels -> (3 + 2C,) long: [N, top-1 hits, top-k hits, per-class hits, per-class totals]."""
    labels = labels.long().cpu()
    topk = scores.float().cpu().topk(min(5, scores.shape[1]), dim=1).indices  # (N, k)
    correct = topk == labels[:, None]  # (N, k)
    hits = torch.bincount(labels[correct[:, 0]], minlength=num_classes)  # (C,)
    totals = torch.bincount(labels, minlength=num_classes)  # (C,)
    head = torch.tensor([len(labels), int(correct[:, 0].sum()), int(correct.any(dim=1).sum())])
    return torch.cat([head, hits, totals])


def counts_metrics(counts: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1, top-k accuracy and mean per-class recall from (summed) :func:`classification_counts`."""
    n, top1, topk = (int(v) for v in counts[:3])
    if n == 0:
        return {}
    hits, totals = counts[3:3 + num_classes], counts[3 + num_classes:]
    present = totals > 0
    recall = (hits[present].double() / totals[present].double()).mean().item()
    return {"acc1": top1 / n, "acc5": topk / n, "mean_per_class_recall": recall}


@dataclass(frozen=True)
class AccuracyOptions:
    """A classifier's validation: at most ``max_batches`` batches of this rank (None: all)."""

    max_batches: int | None = None

    def __post_init__(self):
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ValueError(f"max_batches must be an int >= 1 or None, got {self.max_batches!r}")


@dataclass(frozen=True)
class Accuracy:
    """Top-1 / top-5 (top-min(5, C)) accuracy and mean cross-entropy of ``model(images) -> (B, C) logits``.

    Rank rule: counts and the summed loss are added over ranks. Returns {} when no sample was scored."""

    options: AccuracyOptions = field(default_factory=AccuracyOptions)
    batching: Batching = field(default_factory=Batching)
    name: str = "accuracy"

    @torch.no_grad()
    def run(self, model, data, *, device=None, precision: str = "fp32", group=None) -> dict[str, float]:
        dtype_of(precision)
        was_training = model.training
        model.eval()
        device = device if device is not None else next(model.parameters()).device
        counts = torch.zeros(3, dtype=torch.long)  # samples, top-1 hits, top-k hits
        loss_sum = torch.zeros((), dtype=torch.float64)
        try:
            for i, (columns, _) in enumerate(rank_batches(data, self.batching, group, "validating")):
                if self.options.max_batches is not None and i >= self.options.max_batches:
                    break
                images, labels = columns[0].to(device), columns[1].to(device).long()
                with autocast(precision, device):
                    logits = model(images).float()  # (B, C)
                counts += classification_counts(logits, labels, logits.shape[1])[:3]
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        finally:
            model.train(was_training)
        counts, loss_sum = all_sum(counts, group), all_sum(loss_sum, group)
        n, top1, topk = (int(v) for v in counts)
        if n == 0:
            return {}
        return {"acc1": top1 / n, "acc5": topk / n, "loss": float(loss_sum) / n}


@dataclass(frozen=True)
class ZeroShotOptions:
    """Zero-shot classification: the prompt templates (``{c}`` marks the class name) and text chunk size."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    text_batch_size: int = TEXT_BATCH_SIZE

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.templates:
            raise ValueError("zero-shot needs at least one prompt template")
        if self.text_batch_size < 1:
            raise ValueError(f"text_batch_size must be >= 1, got {self.text_batch_size}")


@dataclass(frozen=True)
class ZeroShot:
    """CLIP zero-shot accuracy on :class:`~openeva.evaluators.base.Labelled` images.

    The class weights come from :func:`~openeva.evaluators.text.build_zeroshot_classifier` (every rank builds
    the same); each rank scores its part and the counts are summed."""

    tokenizer: object
    options: ZeroShotOptions = field(default_factory=ZeroShotOptions)
    batching: Batching = field(default_factory=Batching)
    name: str = "zeroshot"

    def classifier(self, model, classnames, *, device="cpu", precision: str = "fp32") -> torch.Tensor:
        """(E, C) class weights of ``classnames`` under this evaluator's templates."""
        return build_zeroshot_classifier(model, self.tokenizer, classnames, self.options.templates,
                                         batch_size=self.options.text_batch_size, device=device,
                                         precision=precision, progress=self.batching.progress)

    @torch.no_grad()
    def run(self, model, data: Labelled, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        dtype_of(precision)
        num_classes = len(data.classnames)
        weights = self.classifier(model, data.classnames, device=device, precision=precision).to(device)  # (E, C)
        counts = torch.zeros(3 + 2 * num_classes, dtype=torch.long)
        for columns, _ in rank_batches(data.dataset, self.batching, group, "zero-shot"):
            with autocast(precision, device):
                feats = image_features(model, columns[0].to(device))  # (B, E)
            counts += classification_counts(zeroshot_logits(feats, weights), columns[1], num_classes)
        return counts_metrics(all_sum(counts, group), num_classes)
