"""Image-text retrieval recall@k (COCO / Flickr30k protocol, several captions per image allowed).

Rank rule: gather the features. Every rank encodes its block of the pairs and receives every rank's
features in dataset order, so the ranks (and the optional contrastive validation loss) are one process's.
The ranks and metrics are :mod:`openeva.metrics`, shared with every other user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from openeva.evaluators.base import Batching
from openeva.evaluators.features import extract
from openeva.metrics import DEFAULT_KS, RetrievalRanks, retrieval_metrics, retrieval_ranks

__all__ = ["DEFAULT_KS", "Retrieval", "RetrievalOptions", "RetrievalRanks", "evaluate_retrieval",
           "retrieval_metrics", "retrieval_ranks"]


def evaluate_retrieval(image_features, text_features, text_to_image, ks=DEFAULT_KS):
    """(metrics, ranks) from (N, E) image features, (T, E) text features and the (T,) caption -> image map."""
    ranks = retrieval_ranks(image_features, text_features, text_to_image)
    return retrieval_metrics(ranks, ks), ranks


@dataclass(frozen=True)
class RetrievalOptions:
    """Recall@k for these k; ``loss`` adds CLIP's symmetric contrastive loss at the model's logit scale, averaged
    over chunks of ``batching.batch_size`` pairs (the validation loss of CLIP training)."""

    ks: tuple[int, ...] = DEFAULT_KS
    loss: bool = False

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(self.ks))
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"retrieval ks must be integers >= 1, got {list(self.ks)}")


@dataclass(frozen=True)
class Retrieval:
    """Retrieval over a dataset of ``(image (3, H, W), tokens (L,))`` pairs: caption i belongs to image i."""

    options: RetrievalOptions = field(default_factory=RetrievalOptions)
    batching: Batching = field(default_factory=Batching)
    name: str = "retrieval"

    @torch.no_grad()
    def run(self, model, data, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        def encode(columns):
            return (model.encode_image(columns[0], normalize=True),  # (B, E)
                    model.encode_text(columns[1], normalize=True))  # (B, E)

        (images, texts), _ = extract(encode, data, self.batching, device=device, precision=precision, group=group,
                                     gather=True, desc="retrieval")  # (N, E), (N, E), in dataset order
        metrics = retrieval_metrics(retrieval_ranks(images, texts, torch.arange(len(images))), self.options.ks)
        if self.options.loss:
            metrics = {"loss": self._loss(images, texts, model.logit_scale.exp().item()), **metrics}
        return metrics

    def _loss(self, images: torch.Tensor, texts: torch.Tensor, logit_scale: float) -> float:
        """Mean over chunks of the symmetric cross-entropy of (b, b) image-text logits."""
        losses = []
        for start in range(0, len(images), self.batching.batch_size):
            img = images[start:start + self.batching.batch_size]  # (b, E)
            txt = texts[start:start + self.batching.batch_size]  # (b, E)
            logits = logit_scale * img @ txt.T  # (b, b)
            target = torch.arange(len(img))
            losses.append(((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2).item())
        return sum(losses) / len(losses)
