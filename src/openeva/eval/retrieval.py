"""Image-text retrieval recall@k with several captions per image (COCO / Flickr30k protocol).

The ranks and metrics are :mod:`openeva.metrics` (shared with CLIP training's validation); this module is the
evaluation entry point on encoded features.
"""

from __future__ import annotations

from openeva.metrics import DEFAULT_KS, RetrievalRanks, retrieval_metrics, retrieval_ranks

__all__ = ["DEFAULT_KS", "RetrievalRanks", "evaluate_retrieval", "retrieval_metrics", "retrieval_ranks"]


def evaluate_retrieval(image_features, text_features, text_to_image, ks=DEFAULT_KS):
    """Convenience: (metrics, ranks) from features and the caption -> image map."""
    ranks = retrieval_ranks(image_features, text_features, text_to_image)
    return retrieval_metrics(ranks, ks), ranks
