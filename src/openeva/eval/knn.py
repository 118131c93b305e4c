"""Weighted kNN on frozen features: the protocol lives in :mod:`openeva.evaluators.knn` (shared with training);
these are the names ``openeva.eval.knn`` has always offered."""

from openeva.evaluators.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, KNN, MAIN_K, KNNOptions, knn_classify, knn_scores, main_k

__all__ = ["DEFAULT_KS", "DEFAULT_TEMPERATURE", "KNN", "KNNOptions", "MAIN_K", "knn_classify", "knn_scores", "main_k"]
