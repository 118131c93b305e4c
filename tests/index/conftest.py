"""Helpers for the index tests: unit vectors, clustered vectors, metadata rows."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin against each other on a shared 2-core machine (k-means 20x slower): one thread."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered(n: int, d: int, clusters: int = 40, spread: float = 0.25, seed: int = 0, centres: int = 100) -> np.ndarray:
    """(n, d) unit vectors around ``clusters`` centres: neighbour structure like real embeddings."""
    rng = np.random.default_rng(seed)
    centre = unit(clusters, d, centres)  # the same centres for every seed: queries from the same distribution
    v = centre[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d) * 4
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def rows(n: int, start: int = 0, **extra) -> list[dict]:
    return [{"id": f"item{i}", "path": f"photos/{2023 + i % 2}/{i}.jpg", "caption": f"c{i}", "width": 100 + i,
             "height": 50 + i % 7, "source": {"path": f"/data/photos/{i}.jpg"},
             **{k: (v(i) if callable(v) else v) for k, v in extra.items()}} for i in range(start, start + n)]


def exact(q: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) exact top-k rows by inner product on the float16-rounded vectors (what the index stores)."""
    s = q @ v.astype(np.float16).astype(np.float32).T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]
