"""Near-duplicates: groups of rows whose cosine similarity reaches a threshold, and folding them in results.

:func:`find_duplicate_groups` scans the index's own vectors in batches (``index.iter_vectors``), asks the index
for every stored row within ``threshold`` of each (``index.range_search``: the index's kind decides how, exactly
for flat, through the re-ranked candidates for compressed kinds), and joins each pair in a union-find. A group is a
connected component: rows linked by a chain of pairs at or above the threshold (single linkage, as image
de-duplication tools group). Memory is bounded by one batch of vectors and its range-search answer plus one entry
per row that has a duplicate; the pairs themselves are never kept.

:func:`fold_duplicates` folds the near-duplicates among one query's ranked hits into the best-ranked of them (a
search option: ten photos of one burst take one result slot, not ten).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openeva.index.core import MAX_K
from openeva.runtime import atomic_write_text

DEFAULT_THRESHOLD = 0.95
DEFAULT_BATCH = 1024
META_KEYS = ("id", "path", "caption", "width", "height")


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not -1.0 <= threshold <= 1.0:  # NaN fails this too
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    return threshold


class UnionFind:
    """Disjoint sets over sparse integer keys (row ids), by size with path halving; only joined keys take memory."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        for x in (a, b):
            if x not in self.parent:
                self.parent[x], self.size[x] = x, 1
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size.pop(rb)

    def groups(self) -> list[list[int]]:
        """Every set of two or more keys, each sorted, the sets largest first (ties: smallest first key)."""
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


@dataclass
class DuplicateGroups:
    """The result of :func:`find_duplicate_groups`: ``groups`` of rows (each sorted, largest group first) and, per
    row in a group, the highest similarity it has to another row of the index (``best``)."""

    threshold: float
    groups: list[list[int]]
    best: dict[int, float] = field(default_factory=dict)
    rows_scanned: int = 0

    @property
    def rows_in_groups(self) -> int:
        return sum(len(g) for g in self.groups)

    def records(self, meta: dict[int, dict] | None = None) -> list[dict]:
        """One dict per group: ``group`` (0 = largest), ``size``, ``rows``: [{row, score, id, path, ...}]."""
        meta = meta or {}
        return [{"group": i, "size": len(g),
                 "rows": [{"row": int(r), "score": round(self.best.get(r, 1.0), 6),
                           **{k: meta.get(r, {}).get(k) for k in META_KEYS if k in meta.get(r, {})}} for r in g]}
                for i, g in enumerate(self.groups)]


def find_duplicate_groups(index, threshold: float = DEFAULT_THRESHOLD, *, batch: int = DEFAULT_BATCH,
                          progress=None) -> DuplicateGroups:
    """Groups of rows of ``index`` (an :class:`openeva.index.Index`) whose cosine similarity is ``>= threshold``.

    ``progress``: an optional callable given the number of rows scanned so far after every batch."""
    threshold = check_threshold(threshold)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    uf, best, scanned = UnionFind(), {}, 0
    for rows, vectors in index.iter_vectors(batch=batch):  # (n,), (n, D)
        vectors = np.asarray(vectors, dtype=np.float32)
        answers = index.range_search(vectors, threshold)
        for row, (found, scores) in zip(np.asarray(rows).tolist(), answers):
            found = np.asarray(found)
            scores = np.asarray(scores)
            keep = (found != row) & (scores >= threshold)  # a row finds itself: not a pair
            for other, score in zip(found[keep].tolist(), scores[keep].tolist()):
                uf.union(row, other)
                for r in (row, other):
                    if score > best.get(r, -2.0):
                        best[r] = float(score)
        scanned += len(rows)
        if progress is not None:
            progress(scanned)
    groups = uf.groups()
    return DuplicateGroups(threshold, groups, {r: best[r] for g in groups for r in g}, scanned)


def row_metadata(index, rows: Iterable[int]) -> dict[int, dict]:
    """``{row: metadata}`` of the given rows (what a group lists beside its row numbers)."""
    return {int(r): index.row_meta(int(r)) for r in rows}


def hit_vectors(index, hits: Sequence[dict]) -> np.ndarray:
    """(n, D) float32 stored vectors of one query's hits, in hit order, for :func:`fold_duplicates`."""
    return np.asarray(index.vectors([int(h["row"]) for h in hits]), dtype=np.float32)


FOLD_OVERFETCH = 3  # a folded search asks the index for this many times k hits, then folds and cuts to k


def search_folded(index, query: np.ndarray, k: int, fold_threshold: float = DEFAULT_THRESHOLD,
                  **search_kw) -> list[dict]:
    """One query's top ``k`` hits with near-duplicates (cosine >= ``fold_threshold`` to a better hit) folded into
    the hit that kept them (:func:`fold_duplicates`). ``search_kw`` (filter, threshold) go to ``index.search``;
    the index is asked for ``FOLD_OVERFETCH * k`` hits (at most its ``MAX_K``) so that k distinct hits remain."""
    hits = index.search(query, min(MAX_K, FOLD_OVERFETCH * k), **search_kw)[0]
    return fold_duplicates(hits, fold_threshold, hit_vectors(index, hits) if hits else None)[:k]


# ------------------------------------------------------------------------------------------------ writing
def group_rows_table(records: list[dict]) -> list[dict]:
    """The groups flattened: one dict per row, with its group and the group's size (the CSV's lines)."""
    return [{"group": g["group"], "size": g["size"], **r} for g in records for r in g["rows"]]


def write_groups(path, result: DuplicateGroups, meta: dict[int, dict] | None = None) -> Path:
    """Write the groups to ``path``: ``.json`` (groups of rows, with the threshold) or ``.csv`` (one line a row:
    group, size, row, score, id, path, caption, width, height), atomically."""
    path = Path(path)
    records = result.records(meta)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps({"threshold": result.threshold, "groups": len(records), "rows_in_groups":
                           result.rows_in_groups, "rows_scanned": result.rows_scanned, "duplicate_groups": records},
                          indent=2) + "\n"
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["group", "size", "row", "score", *META_KEYS], extrasaction="ignore")
        w.writeheader()
        w.writerows(group_rows_table(records))
        text = buf.getvalue()
    else:
        raise ValueError(f"--out {path}: name a .csv or a .json file (the suffix picks the format)")
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"--out {path}: the folder {path.parent} does not exist")
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------------ folding
def fold_duplicates(hits: Sequence[dict], threshold: float = DEFAULT_THRESHOLD,
                    vectors: np.ndarray | Iterable | None = None) -> list[dict]:
    """One query's ranked hits with near-duplicates folded: a hit whose cosine similarity to a better-ranked kept
    hit is ``>= threshold`` is removed and listed under that hit's ``"duplicates"`` (row, id, path, score, the
    similarity to the hit that kept it); kept hits are re-ranked 1, 2, ... (as the index ranks) and carry
    ``"duplicate_count"``.

    ``vectors``: the hits' (n, D) unit vectors in hit order; without it each hit must carry a ``"vector"``.
    Ask the index for more hits than will be shown (e.g. ``3 * k``) and cut the folded list to ``k``.
    """
    threshold = check_threshold(threshold)
    hits = list(hits)
    if not hits:
        return []
    if vectors is None:
        missing = [i for i, h in enumerate(hits) if "vector" not in h]
        if missing:
            raise ValueError("fold_duplicates needs the hits' vectors: pass vectors=(n, D) in hit order or give each "
                             f"hit a 'vector' (hit {missing[0]} has none)")
        vectors = [h["vector"] for h in hits]
    v = np.asarray(vectors, dtype=np.float32)  # (n, D)
    if v.ndim != 2 or len(v) != len(hits):
        raise ValueError(f"vectors must be (n, D) with one row per hit: got shape {v.shape} for {len(hits)} hits")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sims = v @ v.T  # (n, n)
    kept: list[int] = []
    folded: dict[int, list[dict]] = {}
    for i in range(len(hits)):  # hits are ranked: the first of a near-duplicate set keeps the slot
        home = next((j for j in kept if sims[i, j] >= threshold), None)
        if home is None:
            kept.append(i)
        else:
            folded.setdefault(home, []).append(
                {**{k: hits[i][k] for k in ("row", *META_KEYS, "score") if k in hits[i]},
                 "similarity": round(float(sims[i, home]), 6)})
    out = []
    for rank, j in enumerate(kept, start=1):
        hit = {k: val for k, val in hits[j].items() if k != "vector"}
        hit.update(rank=rank, duplicate_count=len(folded.get(j, [])), duplicates=folded.get(j, []))
        out.append(hit)
    return out
