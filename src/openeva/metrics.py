"""Scores from features: classification accuracy, zero-shot heads, image-text retrieval ranks.

Pure tensor functions below every user: CLIP training's validation (:mod:`openeva.train.clip_task`), the
evaluation protocols (:mod:`openeva.eval`) and the quickstart compute their numbers here, so a metric means the
same thing during training and in ``openeva eval``.

Retrieval metric names follow CLIP_benchmark: ``text_retrieval_recall@k`` is image -> text (an image query
finds any of its captions in the top k texts), ``image_retrieval_recall@k`` is text -> image. Ranks count items
scored strictly higher than the best positive, so ties resolve in the query's favour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_KS", "RetrievalRanks", "classification_metrics", "confusion_matrix", "per_class_accuracy",
    "retrieval_metrics", "retrieval_ranks", "zeroshot_head", "zeroshot_logits",
]


# --------------------------------------------------------------------------------------------- zero-shot
def zeroshot_head(text_embeddings: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C*T, E) prompt embeddings, class-major -> zero-shot weights (E, C): per class, the mean of the
    normalized template embeddings, renormalized (CLIP's prompt ensembling)."""
    emb = F.normalize(text_embeddings.float(), dim=-1).view(num_classes, -1, text_embeddings.shape[-1])  # (C, T, E)
    weights = F.normalize(emb.mean(dim=1), dim=-1)  # (C, E)
    return weights.t().contiguous()  # (E, C)


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, E) image features x (E, C) classifier -> (N, C) logits, 100 * cosine as CLIP."""
    return 100.0 * F.normalize(image_features.float(), dim=-1) @ classifier.float()


# --------------------------------------------------------------------------------------------- classification
def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1, top-5 (top-min(5, C)) accuracy and mean per-class recall from (N, C) scores.

    Shared by zero-shot, linear probe and kNN. Classes with no test sample are left out of the recall mean.
    """
    labels = labels.long()
    k = min(5, scores.shape[1])
    topk = scores.topk(k, dim=1).indices  # (N, k)
    correct = topk == labels[:, None]  # (N, k)
    preds = topk[:, 0]
    recalls = per_class_accuracy(preds, labels, num_classes)
    present = ~torch.isnan(recalls)
    return {
        "acc1": correct[:, 0].float().mean().item(),
        "acc5": correct.any(dim=1).float().mean().item(),
        "mean_per_class_recall": recalls[present].mean().item(),
    }


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) recall per class; NaN for classes without test samples."""
    totals = torch.bincount(labels, minlength=num_classes).float()
    hits = torch.bincount(labels[preds == labels], minlength=num_classes).float()
    return torch.where(totals > 0, hits / totals.clamp(min=1), torch.full_like(totals, float("nan")))


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


# --------------------------------------------------------------------------------------------- retrieval
DEFAULT_KS = (1, 5, 10)


@dataclass
class RetrievalRanks:
    image_to_text: torch.Tensor  # (N,) 0-based rank of the best-ranked caption of each image
    text_to_image: torch.Tensor  # (T,) 0-based rank of each caption's image
    image_top1_text: torch.Tensor  # (N,) index of the text ranked first for each image


def retrieval_ranks(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> RetrievalRanks:
    """Ranks from cosine similarities, computed in row chunks so the (N, T) matrix never exists whole."""
    img = F.normalize(image_features.float(), dim=-1)  # (N, E)
    txt = F.normalize(text_features.float(), dim=-1)  # (T, E)
    text_to_image = text_to_image.long()
    if text_to_image.shape != (txt.shape[0],):
        raise ValueError(f"text_to_image must have shape ({txt.shape[0]},), got {tuple(text_to_image.shape)}")
    if text_to_image.numel() and (text_to_image.min() < 0 or text_to_image.max() >= img.shape[0]):
        raise ValueError("text_to_image holds an index outside the image features")

    i2t, top1 = [], []
    for start in range(0, img.shape[0], chunk_size):
        sims = img[start:start + chunk_size] @ txt.t()  # (c, T)
        rows = torch.arange(start, start + sims.shape[0])
        positive = text_to_image[None, :] == rows[:, None]  # (c, T)
        if not positive.any(dim=1).all():
            raise ValueError("every image needs at least one caption for image -> text retrieval")
        best_pos = sims.masked_fill(~positive, float("-inf")).max(dim=1).values  # (c,)
        i2t.append((sims > best_pos[:, None]).sum(dim=1))
        top1.append(sims.argmax(dim=1))

    t2i = []
    for start in range(0, txt.shape[0], chunk_size):
        sims = txt[start:start + chunk_size] @ img.t()  # (c, N)
        targets = text_to_image[start:start + chunk_size]
        pos = sims.gather(1, targets[:, None])  # (c, 1)
        t2i.append((sims > pos).sum(dim=1))
    return RetrievalRanks(torch.cat(i2t), torch.cat(t2i), torch.cat(top1))


def retrieval_metrics(ranks: RetrievalRanks, ks=DEFAULT_KS) -> dict[str, float]:
    """Recall@k for both directions plus mean and median rank (1-based), as open_clip's val metrics."""
    metrics = {}
    for k in ks:
        metrics[f"text_retrieval_recall@{k}"] = (ranks.image_to_text < k).float().mean().item()
        metrics[f"image_retrieval_recall@{k}"] = (ranks.text_to_image < k).float().mean().item()
    for direction, r in (("text_retrieval", ranks.image_to_text), ("image_retrieval", ranks.text_to_image)):
        r1 = r.float() + 1
        metrics[f"{direction}_mean_rank"] = r1.mean().item()
        metrics[f"{direction}_median_rank"] = r1.median().item()
    return metrics


# ------------------------------------------------------------------------------------ segmentation
def confusion(pred: torch.Tensor, truth: torch.Tensor, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """(H, W) predictions and truth (pixels labelled ``ignore_index`` left out) -> (L, L) counts, row = truth."""
    keep = truth != ignore_index
    idx = truth[keep].long() * num_labels + pred[keep].long()
    return torch.bincount(idx, minlength=num_labels * num_labels).view(num_labels, num_labels)


def iou_metrics(conf: torch.Tensor) -> tuple[dict[str, float], list[float | None]]:
    """mIoU (classes seen in truth or prediction), foreground mIoU, pixel accuracy; per-class IoU (None: unseen)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp  # (L,)
    seen = union > 0
    iou = torch.where(seen, tp / union.clamp_min(1), torch.zeros_like(tp))
    per_class = [float(v) if s else None for v, s in zip(iou.tolist(), seen.tolist())]
    fg_seen = seen.clone()
    fg_seen[0] = False
    metrics = {
        "miou": float(iou[seen].mean()) if seen.any() else 0.0,
        "miou_fg": float(iou[fg_seen].mean()) if fg_seen.any() else 0.0,
        "pixel_acc": float(tp.sum() / conf.sum().clamp_min(1)),
    }
    return metrics, per_class
