"""Weighted k-nearest-neighbour classification on frozen features (DINO, Caron et al. 2021, Sec. 4.1).

Cosine similarity to every training feature; the k most similar vote for their class with weight
exp(sim / T), T = 0.07. One similarity pass serves every k: neighbours are taken for the largest k and
sliced for the smaller ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openeva.eval.zeroshot import classification_metrics

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
