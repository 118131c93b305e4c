"""Image-text retrieval recall@k: the protocol lives in :mod:`openeva.evaluators.retrieval` (shared with CLIP
training's validation); these are the names ``openeva.eval.retrieval`` has always offered."""

from openeva.evaluators.retrieval import (
    DEFAULT_KS, Retrieval, RetrievalOptions, RetrievalRanks, evaluate_retrieval, retrieval_metrics, retrieval_ranks,
)

__all__ = ["DEFAULT_KS", "Retrieval", "RetrievalOptions", "RetrievalRanks", "evaluate_retrieval",
           "retrieval_metrics", "retrieval_ranks"]
