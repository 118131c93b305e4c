"""Build one segment from a stream of (vectors, metadata) chunks: train on a sample, add chunk by chunk, measure.

Two passes over the stream, never all of it in memory: the first reads only the rows of the training sample
(at most :data:`openeva.index.ann.TRAIN_MAX`), the second appends every chunk to the segment's float16 vector
file, its metadata file and the FAISS part. Memory is the FAISS part (bounded by the kind's budget), the
sample, and one chunk. IVF kinds keep a random held-out sample out of the FAISS part until recall has been
measured (:mod:`openeva.index.recall`), then add it; rows keep the order of the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from openeva.index import ann, recall
from openeva.index.segment import SegmentWriter

RECALL_QUERIES = 500
Chunks = Callable[[], Iterator[tuple[np.ndarray, object]]]  # -> (vectors (b, D), rows list[dict] | pa.Table)


def _nrows(rows) -> int:
    return rows.num_rows if isinstance(rows, pa.Table) else len(rows)


def _sample(chunks: Chunks, n: int, size: int, dim: int, rng) -> np.ndarray:
    """(size, D) float32: the rows at ``size`` random positions of the stream (one pass, reading only those)."""
    pos = np.sort(rng.choice(n, size=size, replace=False))
    out = np.empty((size, dim), np.float32)
    offset, j = 0, 0
    for vectors, rows in chunks():
        b = _nrows(rows)
        hi = np.searchsorted(pos, offset + b)
        if hi > j:
            out[j:hi] = np.asarray(vectors[pos[j:hi] - offset], dtype=np.float32)
            j = hi
        offset += b
    return out


def build_segment(root: Path, name: str, chunks: Chunks, n: int, dim: int, choice: ann.Choice, schema, *,
                  seed: int = 0, target_recall: float | None = 0.95, template=None, tune: bool = True) -> dict:
    """Write segment ``name`` holding the ``n`` rows of ``chunks``; returns ``{"params", "recall@10",
    "recall_queries"}`` (recall measured only for approximate kinds when ``target_recall`` is given and no
    trained ``template`` is reused; ``tune=False`` measures the breadth in ``choice.params`` as given)."""
    faiss = ann.faiss_module()
    rng = np.random.default_rng(seed)
    params = dict(choice.params)
    trained = None
    if template is not None:
        part = faiss.clone_index(template)
    elif ann.needs_training(choice.kind):
        sample = _sample(chunks, n, ann.train_size(choice, n), dim, rng)  # (S, D)
        part = ann.train(choice, dim, sample, seed)
        del sample
        trained = faiss.clone_index(part)
    else:
        part = ann.new_index(choice, dim)
    measure = target_recall is not None and choice.kind != "flat" and template is None and n >= 50
    held = np.sort(rng.choice(n, size=min(RECALL_QUERIES, max(10, n // 20)), replace=False)) if measure else \
        np.zeros(0, np.int64)
    by_id = ann.needs_training(choice.kind)  # IVF kinds take explicit ids: held-out rows keep their place
    if not by_id:
        held = held[:0]
    writer = SegmentWriter(root, name, n, dim, choice.kind, part, schema, trained=trained)
    try:
        offset = 0
        for vectors, rows in chunks():
            b = _nrows(rows)
            if b == 0:
                continue
            to_part = None
            if by_id:
                to_part = np.ones(b, dtype=bool)
                to_part[held[(held >= offset) & (held < offset + b)] - offset] = False
            writer.add(np.asarray(vectors), rows, to_part)
            offset += b
        if offset != n:
            raise ValueError(f"the input held {offset} rows, {n} were expected (did it change while indexing?)")
        info = {"params": params, "recall@10": 1.0 if choice.kind == "flat" else None, "recall_queries": 0}
        if measure:
            if by_id:  # the held-out rows are not in the FAISS part yet: they query it, and exact search skips them
                q = np.asarray(writer.vectors[held], dtype=np.float32)  # (H, D)
                truth = recall.exact_truth(q, writer.vectors, n, exclude=held)
                info["recall_note_queries"] = "held-out rows"
            else:  # HNSW ids are sequential: fresh queries, stored vectors moved by noise, none of them stored
                picks = writer.vectors[np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))]
                q = np.asarray(picks, dtype=np.float32) + 0.5 / np.sqrt(dim) * rng.standard_normal(
                    (len(picks), dim)).astype(np.float32)
                q /= np.linalg.norm(q, axis=1, keepdims=True)
                truth = recall.exact_truth(q, writer.vectors, n)
                info["recall_note_queries"] = "fresh perturbed queries"
            if tune:
                info["recall@10"] = round(recall.tune(part, choice.kind, params, writer.vectors, q, truth,
                                                      target_recall), 4)
            else:  # the caller fixed the breadth: measure it as given
                _, got = ann.search_segment(part, choice.kind, params, writer.vectors, q, truth.shape[1])
                info["recall@10"] = round(recall.recall(truth, got), 4)
            info["recall_queries"] = len(q)
            info["recall_corpus"] = int(n - len(held))
        writer.add_ids(held)  # the held-out rows join the index after the measurement
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return info
