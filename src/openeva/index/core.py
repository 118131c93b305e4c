"""The :class:`Index`: an on-disk, memory-mapped FAISS index that grows by segments (see :mod:`.store`).

Reads take no lock: a search runs over an immutable snapshot (the segments a version lists, with their
tombstones), so a write in this process or another never disturbs it; ``refresh()`` moves to the newest
version. Writes (``add``, ``delete``, ``compact``) take the folder's lock file, re-read the newest version, and
commit a new one. Rows are numbered across segments (``row`` in hits): stable across adds and deletes,
renumbered by compaction.

Filtered search: per segment the filter's row mask (cached) is combined with the tombstones; when fewer than
:data:`EXACT_SCAN` rows are allowed they are scored exactly, otherwise FAISS searches only the allowed rows
(``IDSelectorBitmap``) and an IVF search that still comes back short widens ``nprobe`` up to ``nlist``.
"""

from __future__ import annotations

import bisect
import shutil
import threading
import weakref
from pathlib import Path

import numpy as np

from openeva.index import _write, ann, store
from openeva.index.filters import SearchFilter
from openeva.index.meta import table_rows
from openeva.index.segment import LivePart, Segment

MAX_K = 1000
EXACT_SCAN = 4096  # a filter allowing at most this many rows of a segment scores them exactly
_HIT_SKIP = ("source",)


class _Snapshot:
    def __init__(self, name: str, manifest: dict, parts: list[LivePart]):
        self.name, self.manifest, self.parts = name, manifest, parts
        self.bases = [p.base for p in parts]
        self.count = sum(p.n_live for p in parts)

    def locate(self, row: int) -> tuple[LivePart, int] | None:
        i = bisect.bisect_right(self.bases, row) - 1
        if i < 0 or not 0 <= row - self.parts[i].base < self.parts[i].seg.rows:
            return None
        part, local = self.parts[i], row - self.parts[i].base
        return None if part.live is not None and not part.live[local] else (part, local)


class Index:
    """An index folder opened for search (memory-mapped) and for writes (segments, under a lock file)."""

    def __init__(self, root, *, _temporary: bool = False):
        self.root = Path(root).expanduser()
        self._lock = threading.RLock()
        self._segments: dict[str, Segment] = {}
        self._stamp = None
        self._snap: _Snapshot | None = None
        self._temporary = None
        if _temporary:
            self._temporary = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self._load()

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path) -> Index:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"index folder {root} does not exist; build one with `openeva index build "
                                    f"EMBEDDINGS --out {root}`")
        if store.current_name(root) is None:
            raise FileNotFoundError(f"{root} is not an openeva index (no CURRENT file); build one with "
                                    "`openeva index build`")
        return cls(root)

    load = open

    def _load(self) -> bool:
        """Open the version ``CURRENT`` names (reusing segments already open); True if it changed."""
        for attempt in range(5):
            stamp = store.stamp(self.root)
            name = store.current_name(self.root)
            if name is None:
                raise FileNotFoundError(f"{self.root} is not an openeva index (no CURRENT file)")
            if self._snap is not None and name == self._snap.name:
                self._stamp = stamp
                return False
            try:
                manifest = store.read_manifest(self.root, name)
                parts = []
                for entry in manifest["segments"]:
                    seg = self._segments.get(entry["name"]) or Segment(self.root / "segments" / entry["name"])
                    deleted = seg.tombstones(entry.get("deleted"))
                    live = None
                    if len(deleted):
                        live = np.ones(seg.rows, dtype=bool)
                        live[deleted] = False
                    parts.append(LivePart(seg, int(entry["base"]), entry, live, seg.rows - len(deleted)))
            except (FileNotFoundError, ValueError):
                if attempt == 4 or store.current_name(self.root) == name:
                    raise  # really missing or corrupt
                continue  # a writer moved CURRENT on and removed this version's files meanwhile: read it again
            self._segments = {p.seg.name: p.seg for p in parts}
            self._snap, self._stamp = _Snapshot(name, manifest, parts), stamp
            return True
        return False

    def refresh(self) -> bool:
        """Follow ``CURRENT`` if another process (or writer) made a new version live; a stat when nothing changed."""
        if store.stamp(self.root) == self._stamp:
            return False
        with self._lock:
            return self._load()

    # ------------------------------------------------------------------------------------------ facts
    @property
    def manifest(self) -> dict:
        return self._snap.manifest

    @property
    def version(self) -> str:
        return self._snap.name

    def __len__(self) -> int:
        return self._snap.count

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def num_segments(self) -> int:
        return len(self._snap.parts)

    def info(self) -> dict:
        m = self.manifest
        return {"path": str(self.root), "version": self._snap.name, "count": len(self), "dim": self.dim,
                "kind": self.kind, "factory": m.get("factory"), "kind_reason": m.get("kind_reason"),
                "params": m.get("params"), "recall@10": m.get("recall@10"), "recall_note": m.get("recall_note"),
                "model": m.get("model"), "segments": [{"name": p.seg.name, "kind": p.seg.kind, "rows": p.seg.rows,
                                                       "deleted": p.seg.rows - p.n_live} for p in self._snap.parts],
                "disk_bytes": sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())}

    def check_compatible(self, model_info: dict) -> None:
        """Refuse vectors from another model (dimension, config or weights differ)."""
        if int(model_info.get("dim", -1)) != self.dim:
            raise ValueError(f"vectors of dimension {model_info.get('dim')} cannot go into an index of dimension "
                             f"{self.dim} (built with model {self.manifest.get('model')!r})")
        for key in ("config_hash", "weights_hash"):
            if self.manifest.get(key) and model_info.get(key) and self.manifest[key] != model_info[key]:
                raise ValueError(f"these vectors come from another model than the index ({key} differs: "
                                 f"index {self.manifest.get('model')!r}, vectors {model_info.get('model')!r})")

    # ------------------------------------------------------------------------------------------ rows
    def has_row(self, row: int) -> bool:
        return self._snap.locate(int(row)) is not None

    def row_meta(self, row: int) -> dict:
        """The metadata of row ``row`` (``source`` included); IndexError if it is not (or no longer) there."""
        found = self._snap.locate(int(row))
        if found is None:
            raise IndexError(f"row {row} is not in the index")
        part, local = found
        return table_rows(part.seg.meta, [local])[0]

    def vectors(self, rows) -> np.ndarray:
        """(n, D) float16 stored vectors of rows ``rows``, in that order; IndexError for a row not (or no longer)
        in the index."""
        snap = self._snap
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        out = np.empty((len(rows), self.dim), np.float16)
        for i, r in enumerate(rows.tolist()):
            found = snap.locate(r)
            if found is None:
                raise IndexError(f"row {r} is not in the index")
            out[i] = found[0].seg.vectors[found[1]]
        return out

    @property
    def meta(self) -> _MetaView:
        """``index.meta[row]``: the metadata dict of a row (the old in-memory list's interface)."""
        return _MetaView(self)

    def iter_vectors(self, batch: int = 65536):
        """(rows (n,) int64, vectors (n, D) float16) of every live row, segment by segment, read from the maps."""
        for part in self._snap.parts:
            for start in range(0, part.seg.rows, batch):
                stop = min(part.seg.rows, start + batch)
                local = np.arange(start, stop)
                v = np.asarray(part.seg.vectors[start:stop])  # (n, D) float16
                if part.live is not None:
                    keep = part.live[start:stop]
                    local, v = local[keep], v[keep]
                if len(local):
                    yield local + part.base, v

    @property
    def faiss_index(self):
        """The FAISS part of a one-segment index, its search breadth set (for benchmarks and direct use)."""
        if len(self._snap.parts) != 1:
            raise ValueError(f"the index has {len(self._snap.parts)} segments; compact it for one FAISS index")
        part = self._snap.parts[0].seg.part
        params = self.manifest.get("params", {})
        kind = self._snap.parts[0].seg.kind
        if kind in ("ivf", "ivfpq"):
            ann.faiss_module().extract_index_ivf(part).nprobe = int(params.get("nprobe", 1))
        elif kind == "hnsw":
            part.hnsw.efSearch = int(params.get("ef_search", 64))
        return part

    # ------------------------------------------------------------------------------------------ search
    def _check_queries(self, queries) -> np.ndarray:
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))  # (Q, D)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[-1]} does not match the index ({self.dim})")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values")
        return q

    @staticmethod
    def _allowed(part: LivePart, flt: SearchFilter | None):
        """(mask (n,) bool or None for all rows, allowed count, FAISS selector or None) for one segment: the
        filter's rows that are live. Cached per snapshot part (a few filters), so a repeated query costs no
        pass over the rows."""
        key = None if flt is None or flt.empty else flt
        cached = part.cache.get(key)
        if cached is not None:
            return cached
        allowed = part.live
        if key is not None:
            mask = part.seg.filter_mask(key)
            allowed = mask if allowed is None else (mask & allowed)
        n_allowed = part.seg.rows if allowed is None else int(allowed.sum())
        selector = None
        if allowed is not None and n_allowed > EXACT_SCAN:
            selector = ann.bitmap_selector(allowed)  # (selector, the bits it points into: kept alive with it)
        if len(part.cache) >= 8:
            part.cache.pop(next(iter(part.cache), None), None)  # threads may race here: harmless
        part.cache[key] = (allowed, n_allowed, selector)
        return part.cache[key]

    def search(self, queries, k: int = 10, *, filter=None, threshold: float | None = None) -> list[list[dict]]:
        """For each (D,) unit query row, the top ``k`` live hits allowed by ``filter`` (a :class:`SearchFilter`,
        or its text form), with ``score >= threshold``: ``{"rank", "score", "row", "id", "path", "caption",
        "width", "height", ...extra columns}``."""
        q = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        flt = _as_filter(filter)
        if threshold is not None and not np.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        snap = self._snap
        scores, rows = self._topk(snap, q, int(k), flt)
        return self._hits(snap, scores, rows, threshold)

    def _topk(self, snap: _Snapshot, q: np.ndarray, k: int, flt) -> tuple[np.ndarray, np.ndarray]:
        params = snap.manifest.get("params", {})
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_r = np.zeros((len(q), 0), np.int64)
        for part in snap.parts:
            seg = part.seg
            allowed, n_allowed, selector = self._allowed(part, flt)
            if n_allowed == 0:
                continue
            if allowed is not None and n_allowed <= EXACT_SCAN:
                s, r = ann.exact_topk(q, seg.vectors, np.flatnonzero(allowed), k)
            else:
                sel = selector[0] if selector is not None else None
                s, r = ann.search_segment(seg.part, seg.kind, params, seg.vectors, q, k, sel)
                s, r = self._widen(seg, params, q, k, min(k, n_allowed), s, r, sel, allowed)
            r = np.where(r >= 0, r + part.base, -1)
            s = np.where(r >= 0, s, -np.inf)
            best_s, best_r = np.concatenate([best_s, s], axis=1), np.concatenate([best_r, r], axis=1)
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s, best_r = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_r, order, axis=1)
        return best_s, best_r

    @staticmethod
    def _widen(seg: Segment, params: dict, q, k: int, need: int, s, r, sel, allowed):
        """Queries that came back with fewer than ``need`` hits (a filter emptied the probed IVF lists, or HNSW's
        walk): IVF doubles ``nprobe`` up to ``nlist``; anything still short is scored exactly over the allowed
        rows."""
        short = np.flatnonzero((r >= 0).sum(axis=1) < need)
        if not len(short):
            return s, r
        s, r = s.copy(), r.copy()
        for i in short:
            qi = q[i:i + 1]
            si, ri = s[i:i + 1], r[i:i + 1]
            if seg.kind in ("ivf", "ivfpq"):
                nprobe, nlist = int(params.get("nprobe", 1)), int(params.get("nlist", 1))
                while (ri >= 0).sum() < need and nprobe < nlist:
                    nprobe = min(nlist, 2 * nprobe)
                    si, ri = ann.search_segment(seg.part, seg.kind, params, seg.vectors, qi, k, sel, nprobe)
            if (ri >= 0).sum() < need:
                rows = np.flatnonzero(allowed) if allowed is not None else np.arange(seg.rows)
                es, er = ann.exact_topk(qi, seg.vectors, rows, k)
                si = np.full((1, k), -np.inf, np.float32)
                ri = np.full((1, k), -1, np.int64)
                si[:, :es.shape[1]], ri[:, :er.shape[1]] = es, er
            s[i, :si.shape[1]], r[i, :ri.shape[1]] = si[0, :s.shape[1]], ri[0, :r.shape[1]]
        return s, r

    def _hits(self, snap: _Snapshot, scores, rows, threshold) -> list[list[dict]]:
        wanted: dict[int, list[int]] = {}
        for r in rows[rows >= 0].tolist():
            i = bisect.bisect_right(snap.bases, r) - 1
            wanted.setdefault(i, []).append(r - snap.parts[i].base)
        meta = {}
        for i, local in wanted.items():
            local = sorted(set(local))
            for loc, row in zip(local, table_rows(snap.parts[i].seg.meta, local)):
                meta[snap.parts[i].base + loc] = row
        out = []
        for srow, rrow in zip(scores.tolist(), rows.tolist()):
            hits = []
            for s, r in zip(srow, rrow):
                if r < 0 or (threshold is not None and s < threshold):
                    continue
                m = meta[r]
                hits.append({"rank": len(hits) + 1, "score": float(s), "row": int(r),
                             **{key: v for key, v in m.items() if key not in _HIT_SKIP}})
            out.append(hits)
        return out

    def range_search(self, queries, min_score: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, every live row with score >= ``min_score``: (rows int64, scores float32), best first.
        Flat segments are exact; IVF kinds search their tuned ``nprobe`` lists (IVF-PQ re-scores its candidates
        exactly from the float16 vectors); HNSW segments are scanned exactly."""
        q = self._check_queries(queries)
        faiss = ann.faiss_module()
        snap, params = self._snap, self.manifest.get("params", {})
        found = [([], []) for _ in range(len(q))]
        for part in snap.parts:
            seg = part.seg
            if seg.kind in ("flat", "ivf", "ivfpq"):
                sp = faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 1))) if seg.kind != "flat" else None
                radius = float(min_score) - (0.2 if seg.kind == "ivfpq" else 0.0) - 1e-6
                lims, _, ids = seg.part.range_search(q, radius, params=sp)
                for i in range(len(q)):
                    rows = ids[lims[i]:lims[i + 1]].astype(np.int64)
                    if part.live is not None:
                        rows = rows[part.live[rows]]
                    rows = np.sort(rows)
                    sc = (np.asarray(seg.vectors[rows], dtype=np.float32) @ q[i]) if len(rows) else np.zeros(0)
                    keep = sc >= min_score
                    found[i][0].append(rows[keep] + part.base)
                    found[i][1].append(sc[keep].astype(np.float32))
            else:
                for start in range(0, seg.rows, 65536):
                    block = np.asarray(seg.vectors[start:start + 65536], dtype=np.float32)
                    sc = q @ block.T  # (Q, B)
                    for i in range(len(q)):
                        hit = np.flatnonzero(sc[i] >= min_score)
                        if part.live is not None:
                            hit = hit[part.live[start + hit]]
                        found[i][0].append(hit + start + part.base)
                        found[i][1].append(sc[i][hit])
        out = []
        for rows, scores in found:
            rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            scores = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
            order = np.argsort(-scores, kind="stable")
            out.append((rows[order].astype(np.int64), scores[order]))
        return out

    # ------------------------------------------------------------------------------------------ writes
    add = _write.add
    add_embeddings = _write.add_embeddings
    delete = _write.delete
    compact = _write.compact
    save = _write.save
    build = classmethod(_write.build)
    from_vectors = classmethod(_write.from_vectors)
    from_embeddings = classmethod(_write.from_embeddings)
    upgrade = classmethod(_write.upgrade)


class _MetaView:
    def __init__(self, index: Index):
        self._index = index

    def __getitem__(self, row: int) -> dict:
        return self._index.row_meta(row)

    def __len__(self) -> int:
        return int(self._index.manifest.get("next_row", len(self._index)))


def _as_filter(flt) -> SearchFilter | None:
    if flt is None or isinstance(flt, SearchFilter):
        return flt
    if isinstance(flt, (str, list, tuple)):
        return SearchFilter.parse(flt)
    if isinstance(flt, dict):
        return SearchFilter(**flt)
    raise ValueError(f"filter must be a SearchFilter, a dict of its fields or filter text, got {type(flt).__name__}")
