"""A FAISS inner-product index over embedding vectors, with metadata beside it, saved atomically.

On disk an index is a folder of versions and a pointer::

    INDEX/CURRENT               the name of the live version ("v000002"), replaced atomically
    INDEX/v000002/index.faiss   the FAISS index (flat, IVF-flat or HNSW; inner product on unit vectors)
    INDEX/v000002/vectors.npy   (N, D) float32 vectors (rebuilds, recall checks)
    INDEX/v000002/meta.jsonl    row i of the index: id, path, caption, width, height, source
    INDEX/v000002/manifest.json model identity, dimension, kind, parameters, count, measured recall@10

A build or an add writes a complete new version in a hidden temporary folder, renames it into place, and only
then points ``CURRENT`` at it; a crash at any step leaves the previous version live. ``kind="auto"`` is exact
search (``IndexFlatIP``) up to :data:`EXACT_MAX` vectors and IVF-flat above. For approximate kinds the search
breadth (IVF ``nprobe``, HNSW ``ef_search``) is tuned at build time, unless given, to the smallest value whose
recall@10 against exact search on a sample of stored vectors reaches ``target_recall`` (0.9 by default,
autofaiss's approach); the recall reached is measured again after every add and kept in the manifest.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np

from openeva.runtime import atomic_write_bytes, atomic_write_json
from openeva.serve.embed import load_embeddings

KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX = 50_000  # above this many vectors "auto" picks an approximate index
DEFAULT_TARGET_RECALL = 0.9  # recall@10 an approximate index is tuned to reach at build time
RECALL_QUERIES = 500
_MODEL_KEYS = ("model", "config_hash", "weights_hash", "preprocess", "dim")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("indexing needs faiss: pip install 'openeva[serve]' (faiss-cpu)") from e
    return faiss


def resolve_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        return "flat" if n <= EXACT_MAX else "ivf"
    return kind


def _new_faiss_index(kind: str, vectors: np.ndarray, params: dict, seed: int):
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.setdefault("M", 32), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.setdefault("ef_construction", 80)
        index.hnsw.efSearch = params.setdefault("ef_search", 128)
        return index
    # sqrt(N) lists (faiss's rule of thumb, capped so k-means stays minutes on a small CPU), trained on a sample
    nlist = params.setdefault("nlist", max(1, min(int(math.sqrt(n)), n // 39 or 1, 4096)))
    params.setdefault("nprobe", max(1, min(nlist, max(8, nlist // 16), 128)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    index.cp.seed = seed
    index.train(np.ascontiguousarray(sample))
    return index


def _apply_search_params(index, kind: str, params: dict) -> None:
    if kind == "ivf":
        index.nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


def _recall_queries(vectors: np.ndarray, k: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) stored vectors as queries and their (Q, k) exact neighbours."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]  # (Q, D)
    _, truth = _faiss().knn(q, vectors, min(k, len(vectors)), metric=_faiss().METRIC_INNER_PRODUCT)  # exact
    return q, truth


def _recall(index, q: np.ndarray, truth: np.ndarray) -> float:
    _, got = index.search(q, truth.shape[1])  # (Q, k)
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth.tolist(), got.tolist()))
    return hits / truth.size


def measure_recall(index, vectors: np.ndarray, k: int = 10, queries: int = RECALL_QUERIES, seed: int = 0) -> float:
    """recall@k of ``index`` against exact search, with a sample of the stored vectors as queries."""
    if len(vectors) == 0:
        return 1.0
    return _recall(index, *_recall_queries(vectors, k, queries, seed))


def tune_search(index, kind: str, params: dict, vectors: np.ndarray, target: float, seed: int = 0) -> float:
    """Double the search breadth (IVF ``nprobe`` up to ``nlist``; HNSW ``ef_search`` up to 4096) from its
    current value until recall@10 reaches ``target``; ``params`` gets the chosen value. Returns the recall."""
    key, cap = ("nprobe", int(params["nlist"])) if kind == "ivf" else ("ef_search", 4096)
    q, truth = _recall_queries(vectors, 10, RECALL_QUERIES, seed)
    while True:
        _apply_search_params(index, kind, params)
        recall = _recall(index, q, truth)
        if recall >= target or params[key] >= cap:
            return recall
        params[key] = min(cap, 2 * int(params[key]))


class Index:
    """Vectors + metadata + FAISS index. ``Index.build(vectors, meta)`` / ``Index.from_embeddings(dir)``,
    ``add``, ``search``, ``save(path)``, ``Index.load(path)``.

    Thread-safe: ``add``, ``search`` and ``save`` take one lock, so the service can search from worker threads
    while an add grows the FAISS index (a FAISS index must not be read while it is written)."""

    def __init__(self, faiss_index, vectors: np.ndarray, meta: list[dict], manifest: dict):
        self.faiss_index, self.vectors, self.meta, self.manifest = faiss_index, vectors, meta, manifest
        self._ids = {_row_key(row): i for i, row in enumerate(meta)}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    # ------------------------------------------------------------------------------------------ build / add
    @classmethod
    def build(cls, vectors: np.ndarray, meta: list[dict], model_info: dict | None = None, kind: str = "auto",
              params: dict | None = None, seed: int = 0, target_recall: float = DEFAULT_TARGET_RECALL) -> Index:
        """``params`` fixes faiss settings (``nlist``, ``nprobe``, ``M``, ``ef_search`` ...); a search breadth not
        given is tuned to ``target_recall`` (recall@10 against exact search, on stored vectors as queries)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
        if vectors.ndim != 2 or len(vectors) != len(meta):
            raise ValueError(f"vectors {vectors.shape} and {len(meta)} metadata rows do not match")
        if len(vectors) == 0:
            raise ValueError("cannot build an index from zero vectors")
        ids = [row["id"] for row in meta]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in the metadata")
        info = {k: (model_info or {}).get(k) for k in _MODEL_KEYS}
        if info["dim"] is not None and int(info["dim"]) != vectors.shape[1]:
            raise ValueError(f"vectors have dimension {vectors.shape[1]} but the model's is {info['dim']}")
        info["dim"] = vectors.shape[1]
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        resolved = resolve_kind(kind, len(vectors))
        params = dict(params or {})
        fixed = {"nprobe", "ef_search"} & set(params)
        index = _new_faiss_index(resolved, vectors, params, seed)
        _apply_search_params(index, resolved, params)
        index.add(vectors)
        manifest = {**info, "kind": resolved, "params": params, "count": len(vectors), "seed": seed}
        if resolved != "flat" and not fixed:
            tune_search(index, resolved, params, vectors, target_recall, seed)
            manifest["target_recall"] = target_recall
        out = cls(index, vectors, list(meta), manifest)
        out._record_recall()
        return out

    @classmethod
    def from_embeddings(cls, embeddings_dir, kind: str = "auto", params: dict | None = None,
                        target_recall: float = DEFAULT_TARGET_RECALL) -> Index:
        vectors, meta, manifest = load_embeddings(embeddings_dir)
        return cls.build(vectors, meta, manifest, kind=kind, params=params, target_recall=target_recall)

    def _record_recall(self) -> None:
        if self.kind == "flat":
            self.manifest["recall@10"] = 1.0
            self.manifest["recall_note"] = "exact search"
        else:
            self.manifest["recall@10"] = round(measure_recall(self.faiss_index, self.vectors), 4)
            self.manifest["recall_note"] = f"measured on {min(RECALL_QUERIES, len(self))} stored vectors as queries"

    def check_compatible(self, model_info: dict) -> None:
        """Refuse vectors from another model (dimension, config or weights differ)."""
        if int(model_info.get("dim", -1)) != self.dim:
            raise ValueError(f"vectors of dimension {model_info.get('dim')} cannot go into an index of dimension "
                             f"{self.dim} (built with model {self.manifest.get('model')!r})")
        for key in ("config_hash", "weights_hash"):
            if self.manifest.get(key) and model_info.get(key) and self.manifest[key] != model_info[key]:
                raise ValueError(f"these vectors come from another model than the index ({key} differs: "
                                 f"index {self.manifest.get('model')!r}, vectors {model_info.get('model')!r})")

    def add(self, vectors: np.ndarray, meta: list[dict], model_info: dict | None = None) -> int:
        """Add rows not in the index yet (same id from the same source); returns how many were added.

        Ids are relative to the embedded source (``a.jpg`` in two folders), so a row is known by its id and its
        source (absolute path or shard key): two collections with clashing ids both land."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dim}")
        if model_info is not None:
            self.check_compatible(model_info)
        with self._lock:
            return self._add_rows(vectors, meta)

    def _add_rows(self, vectors: np.ndarray, meta: list[dict]) -> int:
        keep = []
        for j, row in enumerate(meta):
            key = _row_key(row)
            if key not in self._ids:
                self._ids[key] = len(self.meta) + len(keep)
                keep.append(j)
        if not keep:
            return 0
        new = vectors[keep]
        self.faiss_index.add(new)
        self.vectors = np.concatenate([self.vectors, new])
        self.meta += [meta[j] for j in keep]
        self.manifest["count"] = len(self.meta)
        self._record_recall()
        return len(keep)

    def add_embeddings(self, embeddings_dir) -> int:
        vectors, meta, manifest = load_embeddings(embeddings_dir)
        return self.add(vectors, meta, manifest)

    # ------------------------------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int = 10) -> list[list[dict]]:
        """For each query row (unit vector), the top ``k`` hits: ``{"rank", "score", "row", **metadata}``."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)  # (Q, D)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the index ({self.dim})")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            scores, rows = self.faiss_index.search(q, min(k, len(self)))  # (Q, k)
            return [[{"rank": r + 1, "score": float(s), "row": int(i), **{key: self.meta[i].get(key) for key in
                      ("id", "path", "caption", "width", "height")}}
                     for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
                    for srow, irow in zip(scores.tolist(), rows.tolist())]

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write a new version under ``path`` and make it live atomically; returns the version folder."""
        with self._lock:
            return self._save(path)

    def _save(self, path) -> Path:
        faiss = _faiss()
        root = check_output_folder(path)
        root.mkdir(parents=True, exist_ok=True)
        # a version folder left by a crashed save (never made live) is not reused: it may be half-removed
        taken = [int(p.name[1:]) for p in root.iterdir() if _VERSION.match(p.name)]
        name = f"v{max(taken, default=0) + 1:06d}"
        tmp = root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        atomic_write_bytes(tmp / "index.faiss", faiss.serialize_index(self.faiss_index).tobytes())
        np.save(tmp / "vectors.npy", self.vectors)
        lines = "".join(json.dumps(row) + "\n" for row in self.meta)
        atomic_write_bytes(tmp / "meta.jsonl", lines.encode())
        atomic_write_json(tmp / "manifest.json", {**self.manifest, "version": name})
        _fsync_dir(tmp)
        os.replace(tmp, root / name)
        _fsync_dir(root)
        atomic_write_bytes(root / "CURRENT", name.encode())
        for old in root.iterdir():  # earlier versions and leftovers of crashed writes
            if old.name != name and (_VERSION.match(old.name) or _TMP.match(old.name)) and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        self.manifest["version"] = name
        return root / name

    @classmethod
    def load(cls, path) -> Index:
        faiss = _faiss()
        root = Path(path).expanduser()
        current = _current_version(root)
        if current is None:
            raise FileNotFoundError(f"{root} is not an openeva index (no CURRENT file); build one with "
                                    "`openeva index build`")
        folder = root / current
        manifest = json.loads((folder / "manifest.json").read_text())
        index = faiss.deserialize_index(np.fromfile(folder / "index.faiss", dtype=np.uint8))
        _apply_search_params(index, manifest["kind"], manifest.get("params", {}))
        vectors = np.load(folder / "vectors.npy")
        meta = [json.loads(line) for line in (folder / "meta.jsonl").read_text().splitlines() if line]
        return cls(index, vectors, meta, manifest)


_VERSION = re.compile(r"^v\d{6}$")  # the version folders save() writes (and alone may remove)
_TMP = re.compile(r"^\.tmp-v\d{6}-\d+$")  # a crashed save's leftovers
# what an index folder may hold; uploads/ is where the service keeps images added over HTTP
_OWN_ENTRY = re.compile(r"^(v\d{6}|\.tmp-v\d{6}-\d+|CURRENT|\.CURRENT\.tmp-\d+|uploads)$")


def check_output_folder(path) -> Path:
    """``path`` as an index output: new, empty, or an openeva index; anything else is refused untouched."""
    root = Path(path).expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"index output {root} is a file, not a folder")
    if root.is_dir() and not (root / "CURRENT").is_file() and any(
            not _OWN_ENTRY.match(p.name) for p in root.iterdir()):
        raise FileExistsError(f"{root} is not empty and is not an openeva index: refusing to write an index "
                              "into it (nothing was changed); pass a new or empty folder")
    return root


def _row_key(row: dict) -> tuple[str, str]:
    """(id, where it came from): what makes an index row the same item."""
    return row["id"], json.dumps(row.get("source"), sort_keys=True)


def _current_version(root: Path) -> str | None:
    pointer = root / "CURRENT"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    return name if (root / name).is_dir() else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
