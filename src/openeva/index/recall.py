"""Recall@10 against exact search, measured at build on held-out queries, and the search breadth tuned to it.

Held-out means the query vectors are *not in the index* when recall is measured: for IVF kinds (FAISS ids given
explicitly) the builder keeps a random sample of rows out of the FAISS part, measures with them as queries
against exact search over the other rows, and only then adds them (rows keep their order). HNSW numbers its
ids itself, so it is measured with fresh queries: stored vectors moved by Gaussian noise (none is stored). A
stored vector used as its own query finds itself at rank 1 under any index, which inflates recall (the old
index's mistake). Ground truth is exact inner-product search over the stored float16 vectors, streamed in blocks.
The breadth (IVF ``nprobe``, HNSW ``ef_search``; for IVF-PQ also the re-rank depth) doubles from its smallest
value until recall reaches ``target_recall`` or the breadth is exhausted. An add does not measure again.
"""

from __future__ import annotations

import numpy as np

from openeva.index import ann

RECALL_K = 10
BLOCK = 16384  # rows per block: (Q, BLOCK) float32 scores stay small


def exact_truth(q: np.ndarray, vectors: np.ndarray, n: int, k: int = RECALL_K, exclude=None) -> np.ndarray:
    """(Q, k') rows of the exact top-k of (Q, D) queries among ``vectors[:n]`` but the rows in ``exclude``,
    streamed in blocks."""
    exclude = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
    k = min(k, n - len(exclude))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, BLOCK):
        block = np.asarray(vectors[start:min(n, start + BLOCK)], dtype=np.float32)  # (B, D)
        if isinstance(vectors, np.memmap):  # let the kernel drop the pages read: resident memory stays bounded
            _advise_dontneed(vectors, start, min(n, start + BLOCK))
        s = q @ block.T  # (Q, B)
        gone = exclude[(exclude >= start) & (exclude < start + len(block))] - start
        s[:, gone] = -np.inf
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if s.shape[1] > kk else np.argsort(-s, axis=1)  # (Q, kk)
        s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)  # (Q, <= 2k)
        i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, axis=1), np.take_along_axis(i, keep, axis=1)
    return best_i


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    hits = sum(len(set(t) & set(g[g >= 0])) for t, g in zip(truth.tolist(), np.asarray(got)))
    return hits / max(1, truth.size)


def tune(part, kind: str, params: dict, vectors: np.ndarray, q: np.ndarray, truth: np.ndarray,
         target: float) -> float:
    """Widen the search of ``part`` until recall@10 on (q, truth) reaches ``target``; ``params`` gets the chosen
    breadth. Returns the recall reached."""
    k = truth.shape[1]

    def measure() -> float:
        _, got = ann.search_segment(part, kind, params, vectors, q, k)
        return recall(truth, got)

    if kind == "hnsw":
        params["ef_search"] = max(16, k)
        while True:
            r = measure()
            if r >= target or params["ef_search"] >= 4096:
                return r
            params["ef_search"] = min(4096, 2 * params["ef_search"])
    nlist = int(params["nlist"])
    params["nprobe"] = 1
    while True:
        r = measure()
        if r >= target:
            return r
        if params["nprobe"] < nlist:
            params["nprobe"] = min(nlist, 2 * params["nprobe"])
        elif kind == "ivfpq" and params.get("reorder", ann.REORDER) < 64:
            params["reorder"] = 2 * int(params.get("reorder", ann.REORDER))  # the codes, not the lists, limit it
        else:
            return r


def _advise_dontneed(vectors: np.memmap, start: int, stop: int) -> None:
    """``madvise(MADV_DONTNEED)`` on rows [start, stop) of a read-only map (clean file pages: re-read on use)."""
    import mmap

    base = getattr(vectors, "_mmap", None)
    if base is None or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = vectors.shape[1] * vectors.itemsize
    head = int(vectors.offset) % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from an aligned start before the data
    offset = head + start * row
    lo = offset - offset % mmap.PAGESIZE
    length = head + stop * row - lo
    length -= length % mmap.PAGESIZE
    if length > 0:
        try:
            base.madvise(mmap.MADV_DONTNEED, lo, length)
        except (OSError, ValueError):
            pass
