"""Weighted k-nearest-neighbour classification on frozen features (DINO, Caron et al. 2021, Sec. 4.1).

Cosine similarity to every training feature; the k most similar vote for their class with weight
exp(sim / T), T = 0.07. One similarity pass serves every k: neighbours are taken for the largest k and
sliced for the smaller ones.

Rank rule: gather the features of the memory bank (the training set, every rank holds all of it, in dataset
order); each rank scores its part of the test set and the per-k counts are summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from openeva.evaluators.base import Batching, TrainTest, rank_batches
from openeva.evaluators.classification import classification_counts, counts_metrics
from openeva.evaluators.distributed import all_sum
from openeva.evaluators.features import extract, image_features
from openeva.evaluators.linear_probe import few_shot_indices
from openeva.metrics import classification_metrics
from openeva.runtime import autocast

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
MAIN_K = 20  # the k DINO reports; its metrics are also stored without a k prefix


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks=DEFAULT_KS,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[int, torch.Tensor]:
    """Class vote scores (N_test, C) for each k; k larger than the training set is clamped to its size."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    train = F.normalize(train_features.float(), dim=-1).to(device)  # (N_train, D)
    test = F.normalize(test_features.float(), dim=-1)  # (N_test, D)
    labels = train_labels.long().to(device)  # (N_train,)
    k_max = min(max(ks), train.shape[0])
    scores = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk_size):
        sims = test[start:start + chunk_size].to(device) @ train.t()  # (c, N_train)
        top_sims, top_idx = sims.topk(k_max, dim=1)  # (c, k_max), sorted descending
        weights = (top_sims / temperature).exp()  # (c, k_max)
        neighbour_labels = labels[top_idx]  # (c, k_max)
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(sims.shape[0], num_classes, device=device)  # (c, C)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            scores[k].append(votes.cpu())
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks=DEFAULT_KS,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
    """Metrics ``knn{k}_acc1`` / ``knn{k}_acc5`` per k, plus ``acc1``/``acc5``/recall for k = 20 (or the
    nearest given k), and the per-k vote scores."""
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    scores = knn_scores(train_features, train_labels, test_features, num_classes, ks,
                        temperature=temperature, device=device)
    metrics: dict[str, float] = {}
    for k in ks:
        m = classification_metrics(scores[k], test_labels, num_classes)
        metrics[f"knn{k}_acc1"] = m["acc1"]
        metrics[f"knn{k}_acc5"] = m["acc5"]
    main = main_k(ks)
    metrics.update(classification_metrics(scores[main], test_labels, num_classes))
    return metrics, scores


def main_k(ks) -> int:
    """The k whose metrics are reported as the headline (20 as DINO, else the closest given k)."""
    return min(ks, key=lambda k: (abs(k - MAIN_K), k))


@dataclass(frozen=True)
class KNNOptions:
    """kNN settings: the k's (metrics per k; the headline k is :func:`main_k`), the vote temperature, and a
    ``few_shot`` memory bank of that many samples per class (drawn with ``seed``)."""

    ks: tuple[int, ...] = DEFAULT_KS
    temperature: float = DEFAULT_TEMPERATURE
    few_shot: int | None = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(self.ks))
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"knn_ks (--knn-k) must be integers >= 1, got {list(self.ks)}")
        if not self.temperature > 0:
            raise ValueError(f"knn_temperature must be > 0, got {self.temperature}")
        if self.few_shot is not None and self.few_shot < 1:
            raise ValueError(f"few_shot must be >= 1, got {self.few_shot}")


@dataclass(frozen=True)
class KNN:
    """Weighted kNN of a frozen model's image features on a :class:`~openeva.evaluators.base.TrainTest` pair."""

    options: KNNOptions = field(default_factory=KNNOptions)
    batching: Batching = field(default_factory=Batching)
    name: str = "knn"

    def bank(self, train_x: torch.Tensor, train_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory bank: the training features, or their few-shot subset."""
        if self.options.few_shot is None:
            return train_x, train_y
        keep = few_shot_indices(train_y, self.options.few_shot, self.options.seed)
        return train_x[keep], train_y[keep]

    def score(self, train_x, train_y, test_x, test_y, num_classes: int, device="cpu"):
        """Features already encoded (one process) -> (metrics, per-k scores, bank size), as :func:`knn_classify`."""
        bank_x, bank_y = self.bank(train_x, train_y)
        metrics, scores = knn_classify(bank_x, bank_y, test_x, test_y, num_classes, self.options.ks,
                                       temperature=self.options.temperature, device=device)
        return metrics, scores, len(bank_y)

    @torch.no_grad()
    def run(self, model, data: TrainTest, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        num_classes, ks = len(data.test.classnames), self.options.ks
        (train_x, train_y), _ = extract(lambda cols: (image_features(model, cols[0]), cols[1].long()),
                                        data.train.dataset, self.batching, device=device, precision=precision,
                                        group=group, gather=True, desc="kNN memory bank")  # (N, E), (N,)
        bank_x, bank_y = self.bank(train_x, train_y)
        counts = torch.zeros(len(ks), 3 + 2 * num_classes, dtype=torch.long)  # per k
        for columns, _ in rank_batches(data.test.dataset, self.batching, group, "kNN"):
            with autocast(precision, device):
                feats = image_features(model, columns[0].to(device)).float()  # (B, E)
            scores = knn_scores(bank_x, bank_y, feats.cpu(), num_classes, ks, temperature=self.options.temperature,
                                device=device)
            counts += torch.stack([classification_counts(scores[k], columns[1], num_classes) for k in ks])
        counts = all_sum(counts, group)
        metrics: dict[str, float] = {}
        for k, c in zip(ks, counts):
            m = counts_metrics(c, num_classes)
            metrics[f"knn{k}_acc1"], metrics[f"knn{k}_acc5"] = m["acc1"], m["acc5"]
        metrics.update(counts_metrics(counts[ks.index(main_k(ks))], num_classes))
        return metrics
