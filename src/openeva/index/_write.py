"""The writing side of :class:`openeva.index.Index`: build, add, delete, compact, save (bound as its methods).

Every write holds the folder's lock file (:func:`openeva.index.store.write_lock`) and the index's thread lock,
re-reads the newest version first (another process may have written), and ends by committing a new version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from openeva.index import ann, store
from openeva.index.build import build_segment
from openeva.index.meta import extra_keys, schema_for
from openeva.index.segment import LivePart, Segment, id_hashes
from openeva.index.shards import EmbeddingFolder

SMALL_SEGMENT = 65536  # adds up to this many rows get an exact (flat) segment; bigger ones the trained kind
MAX_SEGMENTS = 16  # past this, a write merges every segment but the largest into one
DEFAULT_TARGET_RECALL = 0.95
MODEL_KEYS = ("model", "pretrained", "config_hash", "weights_hash", "preprocess", "dim")
_FIXED = ("nprobe", "ef_search")


def row_key(row) -> tuple[str, str]:
    """(id, where it came from): what makes two rows the same item (ids are relative to their source)."""
    source = row.get("source")
    if isinstance(source, str):
        source = json.loads(source)
    return str(row["id"]), json.dumps(source, sort_keys=True)


def _model_info(model_info: dict | None, dim: int) -> dict:
    info = {k: (model_info or {}).get(k) for k in MODEL_KEYS}
    if info["dim"] is not None and int(info["dim"]) != dim:
        raise ValueError(f"vectors have dimension {dim} but the model's is {info['dim']}")
    info["dim"] = dim
    return info


# ---------------------------------------------------------------------------------------------- build
def _build(cls, out, chunks, n: int, dim: int, extras: set, model_info, *, kind, max_memory, target_recall, seed,
           params=None):
    if n == 0:
        raise ValueError("cannot build an index from zero vectors")
    if target_recall is None or not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    temporary = out is None
    root = Path(tempfile.mkdtemp(prefix="openeva-index-")) if temporary else store.check_output_folder(out)
    choice = ann.choose(n, dim, kind, max_memory)
    fixed = bool(set(params or {}) & set(_FIXED))
    if params:
        choice = ann.Choice(choice.kind, _factory(choice, params, dim), {**choice.params, **params}, choice.reason,
                            choice.est_bytes)
    info = _model_info(model_info, dim)
    with store.write_lock(root):
        num = store.next_number(root)
        name = f"s{num:06d}"
        result = build_segment(root, name, chunks, n, dim, choice, schema_for(sorted(extras)), seed=seed,
                               target_recall=float(target_recall), tune=not fixed)
        approx = choice.kind != "flat"
        manifest = {**info, "kind": choice.kind, "requested_kind": kind, "factory": choice.factory,
                    "kind_reason": choice.reason, "max_memory": ann.parse_size(max_memory),
                    "estimated_bytes": choice.est_bytes, "params": result["params"], "seed": seed,
                    "target_recall": float(target_recall) if approx and not fixed else None,
                    "recall@10": result["recall@10"],
                    "recall_note": (f"measured at build on {result['recall_queries']} "
                                    f"{result.get('recall_note_queries')} as queries against exact search over "
                                    f"{result.get('recall_corpus')} vectors; adds do not re-measure it")
                    if approx else "exact search",
                    "mmap": _mmap_note(choice.kind),
                    "template": name if ann.needs_training(choice.kind) else None,
                    "segments": [{"name": name, "base": 0, "rows": n, "kind": choice.kind}],
                    "next_row": n, "count": n}
        store.commit(root, manifest, f"v{num:06d}")
    return cls(root, _temporary=temporary)


def _factory(choice: ann.Choice, params: dict, dim: int) -> str:
    if choice.kind in ("ivf", "ivfpq") and "nlist" in params:
        return choice.factory.replace(f"IVF{choice.params['nlist']},", f"IVF{int(params['nlist'])},")
    if choice.kind == "hnsw" and "M" in params:
        return f"HNSW{int(params['M'])},Flat"
    return choice.factory


def _mmap_note(kind: str) -> str:
    if kind in ("ivf", "ivfpq"):
        return "FAISS part read with IO_FLAG_MMAP (inverted lists on disk); float16 vectors and metadata mapped"
    if kind == "hnsw":
        return "HNSW graph links read into memory (not mappable); its vectors and the metadata are mapped"
    return "flat vectors read with IO_FLAG_MMAP_IFC (mapped); float16 vectors and metadata mapped"


def build(cls, embeddings_dirs, out=None, *args, kind: str = "auto", max_memory=None,
          target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0, params: dict | None = None, **legacy):
    """Build an index in ``out`` from one or more ``openeva embed`` folders, streaming their shards.

    ``Index.build(vectors, meta, model_info=None, ...)`` (arrays in memory, the old signature) still works:
    it builds into a temporary folder that ``save(path)`` copies out."""
    if isinstance(embeddings_dirs, np.ndarray):
        model_info = args[0] if args else legacy.pop("model_info", None)
        return from_vectors(cls, embeddings_dirs, out, model_info=model_info, kind=kind, max_memory=max_memory,
                            target_recall=target_recall, seed=seed, params=params, **legacy)
    if args or legacy:
        raise TypeError(f"unexpected arguments: {args or legacy}")
    dirs = [embeddings_dirs] if isinstance(embeddings_dirs, (str, Path)) else list(embeddings_dirs)
    if not dirs:
        raise ValueError("give at least one embedding folder")
    if out is not None:
        store.check_output_folder(out)  # refused before any work
    folders = [EmbeddingFolder.open(d) for d in dirs]
    first = folders[0].manifest
    for f in folders[1:]:
        if f.dim != folders[0].dim or any(first.get(k) and f.manifest.get(k) and first[k] != f.manifest[k]
                                          for k in ("config_hash", "weights_hash")):
            raise ValueError(f"{f.root} was embedded with another model than {folders[0].root} "
                             f"({f.manifest.get('model')!r} vs {first.get('model')!r}); index them separately")
    extras, keys = set(), []
    for f in folders:  # first pass: metadata only (extra columns, duplicates)
        for rows in f.iter_meta():
            extras |= extra_keys(rows)
            keys.append(id_hashes([repr(row_key(r)) for r in rows]))
    keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    if len(np.unique(keys)) != len(keys):
        raise ValueError("the embedding folders hold the same item (id and source) more than once; pass each "
                         "folder once")
    return _build(cls, out, lambda: (c for f in folders for c in f.iter_chunks()), len(keys), folders[0].dim,
                  extras, first, kind=kind, max_memory=max_memory, target_recall=target_recall, seed=seed,
                  params=params)


def from_vectors(cls, vectors, meta, out=None, *, model_info=None, kind: str = "auto", max_memory=None,
                 target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0, params: dict | None = None):
    """Build from (N, D) vectors and N metadata rows in memory (``out=None``: a temporary folder)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != len(meta):
        raise ValueError(f"vectors {vectors.shape} and {len(meta)} metadata rows do not match")
    keys = [row_key(r) for r in meta]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate ids (from the same source) in the metadata")
    return _build(cls, out, lambda: iter([(vectors, list(meta))]), len(meta), vectors.shape[1], extra_keys(meta),
                  model_info, kind=kind, max_memory=max_memory, target_recall=target_recall, seed=seed,
                  params=params)


def from_embeddings(cls, embeddings_dir, kind: str = "auto", params: dict | None = None,
                    target_recall: float = DEFAULT_TARGET_RECALL, out=None, max_memory=None):
    """``Index.build`` of one embedding folder (into a temporary folder unless ``out``)."""
    return build(cls, embeddings_dir, out, kind=kind, params=params, target_recall=target_recall,
                 max_memory=max_memory)


def upgrade(cls, path):
    """Convert an index of the old layout (``vNNNNNN/index.faiss`` + ``vectors.npy`` + ``meta.jsonl``) in place."""
    root = Path(path).expanduser()
    name = store.current_name(root)
    old = root / name if name else None
    if old is None or not (old / "vectors.npy").is_file() or not (old / "meta.jsonl").is_file():
        raise ValueError(f"{root} is not an index of the old layout (no CURRENT version with vectors.npy and "
                         "meta.jsonl)")
    manifest = json.loads((old / "manifest.json").read_text())
    vectors = np.load(old / "vectors.npy", mmap_mode="r")
    meta = [json.loads(line) for line in (old / "meta.jsonl").read_text().splitlines() if line]
    kind = manifest.get("kind", "auto") if manifest.get("kind") in ann.KINDS else "auto"
    index = from_vectors(cls, vectors, meta, root, model_info=manifest, kind=kind)
    shutil.rmtree(old, ignore_errors=True)  # the old version is no longer live: its full copy goes
    return index


# ---------------------------------------------------------------------------------------------- add
def _new_rows(snap, rows: list[dict], seen: set) -> list[int]:
    """Positions of ``rows`` not in the index yet (same id from the same source) nor earlier in this add."""
    hashes = id_hashes([r["id"] for r in rows])
    existing = set()
    for part in snap.parts:
        local = part.seg.rows_for(np.unique(hashes))
        if part.live is not None:
            local = local[part.live[local]]
        if len(local):
            table = part.seg.meta.take(pa.array(np.sort(local), type=pa.int64()))
            existing |= set(zip(table["id"].to_pylist(),
                                (json.dumps(json.loads(s) if s else None, sort_keys=True)
                                 for s in table["source"].to_pylist())))
    keep = []
    for j, row in enumerate(rows):
        key = row_key(row)
        if key not in existing and key not in seen:
            seen.add(key)
            keep.append(j)
    return keep


def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != self.dim:
        raise ValueError(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dim}")
    if not np.isfinite(np.asarray(vectors, dtype=np.float32)).all():
        raise ValueError("vectors contain NaN or infinite values")
    return vectors


def add(self, vectors, meta, model_info: dict | None = None) -> int:
    """Add the rows not in the index yet as one new segment (O(batch)); returns how many were added."""
    vectors = _check_vectors(self, vectors)
    if len(vectors) != len(meta):
        raise ValueError(f"{len(vectors)} vectors but {len(meta)} metadata rows")
    if model_info is not None:
        self.check_compatible(model_info)
    return _add_chunks(self, lambda: iter([(vectors, list(meta))]))


def add_embeddings(self, embeddings_dirs) -> int:
    """Add the rows of ``openeva embed`` folders (streamed) not in the index yet; returns how many."""
    dirs = [embeddings_dirs] if isinstance(embeddings_dirs, (str, Path)) else list(embeddings_dirs)
    folders = [EmbeddingFolder.open(d) for d in dirs]
    for f in folders:
        self.check_compatible(f.manifest)
    return _add_chunks(self, lambda: (c for f in folders for c in f.iter_chunks()))


def _add_chunks(self, chunks) -> int:
    with self._lock, store.write_lock(self.root):
        self._load()
        snap = self._snap
        seen: set = set()
        keeps, extras = [], set()
        for vectors, rows in chunks():  # first pass: which rows are new (metadata only)
            _check_vectors(self, vectors)
            keep = _new_rows(snap, rows, seen)
            keeps.append(keep)
            extras |= extra_keys([rows[j] for j in keep])
        n = sum(len(k) for k in keeps)
        if n == 0:
            return 0

        def kept():
            for (vectors, rows), keep in zip(chunks(), keeps):
                if keep:
                    yield np.asarray(vectors)[keep], [rows[j] for j in keep]

        num = store.next_number(self.root)
        manifest = json.loads(json.dumps(snap.manifest))
        entry = _write_segment(self, manifest, f"s{num:06d}", kept, n, schema_for(sorted(extras)))
        entry["base"] = manifest["next_row"]
        manifest["segments"].append(entry)
        manifest["next_row"] += n
        manifest["count"] += n
        if len(manifest["segments"]) > MAX_SEGMENTS:
            manifest = _merge_small(self, manifest, num)
        store.commit(self.root, manifest, f"v{num:06d}")
        self._load()
        return n


def _template(self, manifest):
    name = manifest.get("template")
    if not name:
        return None
    path = self.root / "segments" / name / "trained.faiss"
    return ann.faiss_module().read_index(str(path)) if path.is_file() else None


def _write_segment(self, manifest, name, chunks, n, schema) -> dict:
    """A new segment of ``n`` rows: exact (flat) when small or nothing is trained, else a copy of the trained
    empty index (no training, no recall measurement)."""
    template = _template(self, manifest) if n > SMALL_SEGMENT else None
    if template is not None:
        choice = ann.Choice(manifest["kind"], manifest["factory"], manifest.get("params", {}))
    else:
        choice = ann.Choice("flat", "Flat", {})
    build_segment(self.root, name, chunks, n, self.dim, choice, schema, target_recall=None, template=template)
    return {"name": name, "rows": n, "kind": choice.kind}


def _live_chunks(parts, batch: int = 65536):
    """(vectors (b, D) float16, metadata table) of the live rows of ``parts``."""
    def gen():
        for part in parts:
            for start in range(0, part.seg.rows, batch):
                stop = min(part.seg.rows, start + batch)
                idx = np.arange(start, stop)
                if part.live is not None:
                    idx = idx[part.live[start:stop]]
                if len(idx):
                    yield (np.asarray(part.seg.vectors[idx]),
                           part.seg.meta.take(pa.array(idx, type=pa.int64())))
    return gen


def _merged_schema(parts):
    names = sorted({n for p in parts for n in p.seg.meta.column_names} - set(schema_for([]).names))
    return schema_for(names)


def _merge_small(self, manifest, num):
    """Merge every segment but the largest into one (O(their rows)): keeps the segment count bounded."""
    by_name = {p.seg.name: p for p in self._snap.parts}
    entries = manifest["segments"]
    largest = max(entries, key=lambda e: e["rows"])
    small = [e for e in entries if e is not largest]
    parts = []
    for e in small:
        p = by_name.get(e["name"])
        if p is None:  # the segment this write has just made
            seg = Segment(self.root / "segments" / e["name"])
            p = LivePart(seg, e["base"], e, None, seg.rows)
        parts.append(p)
    n = sum(p.n_live for p in parts)
    name = f"s{store.next_number(self.root):06d}"
    entry = _write_segment(self, manifest, name, _live_chunks(parts), n, _merged_schema(parts))
    entry["base"] = manifest["next_row"]
    manifest["next_row"] += n
    manifest["segments"] = [largest, entry]
    return manifest


# ---------------------------------------------------------------------------------------------- delete
def delete(self, ids) -> int:
    """Tombstone every live row whose id is in ``ids``; returns how many rows were deleted. Gone from results
    as soon as this returns; the space comes back at compaction."""
    ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
    if not ids:
        return 0
    wanted = set(ids)
    hashes = np.unique(id_hashes(ids))
    with self._lock, store.write_lock(self.root):
        self._load()
        snap = self._snap
        num = store.next_number(self.root)
        manifest = json.loads(json.dumps(snap.manifest))
        total = 0
        for part, entry in zip(snap.parts, manifest["segments"]):
            local = np.unique(part.seg.rows_for(hashes))
            if part.live is not None:
                local = local[part.live[local]]
            if not len(local):
                continue
            found = part.seg.meta["id"].take(pa.array(local, type=pa.int64())).to_pylist()
            local = local[[i in wanted for i in found]]
            if not len(local):
                continue
            old = part.seg.tombstones(entry.get("deleted"))
            name = f"deleted-v{num:06d}.npy"
            tmp = part.seg.folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, np.union1d(old, local).astype(np.int64))
            tmp.replace(part.seg.folder / name)
            entry["deleted"] = name
            total += len(local)
        if total:
            manifest["count"] -= total
            store.commit(self.root, manifest, f"v{num:06d}")
            self._load()
        return total


# ---------------------------------------------------------------------------------------------- compact
def compact(self) -> None:
    """Rewrite the live rows as one segment, dropping deleted rows: under ``kind="auto"`` the kind is chosen
    again for the current size (and trained, and recall measured again); otherwise the same kind is rebuilt."""
    with self._lock, store.write_lock(self.root):
        self._load()
        snap, old = self._snap, self._snap.manifest
        n = snap.count
        num = store.next_number(self.root)
        manifest = {k: v for k, v in old.items() if k not in ("version", "created")}
        if n == 0:
            manifest.update(segments=[], next_row=0, count=0, template=None)
        else:
            requested = old.get("requested_kind") or old["kind"]
            choice = ann.choose(n, self.dim, requested if requested in ann.KINDS else "auto", old.get("max_memory"))
            name = f"s{num:06d}"
            target = old.get("target_recall") or DEFAULT_TARGET_RECALL
            result = build_segment(self.root, name, _live_chunks(snap.parts), n, self.dim, choice,
                                   _merged_schema(snap.parts), seed=old.get("seed", 0), target_recall=target)
            approx = choice.kind != "flat"
            manifest.update(kind=choice.kind, factory=choice.factory, kind_reason=choice.reason,
                            estimated_bytes=choice.est_bytes, params=result["params"],
                            target_recall=target if approx else None, **{"recall@10": result["recall@10"]},
                            recall_note=(f"measured at compaction on {result['recall_queries']} "
                                         f"{result.get('recall_note_queries')} as queries against exact search over "
                                         f"{result.get('recall_corpus')} vectors")
                            if approx else "exact search", mmap=_mmap_note(choice.kind),
                            template=name if ann.needs_training(choice.kind) else None,
                            segments=[{"name": name, "base": 0, "rows": n, "kind": choice.kind}], next_row=n, count=n)
        store.commit(self.root, manifest, f"v{num:06d}")
        self._load()


# ---------------------------------------------------------------------------------------------- save
def save(self, path) -> Path:
    """Copy the live version into the index folder ``path`` (a new version there) and return its folder. An
    index built without ``out`` (a temporary folder) then lives at ``path``. Saving to its own folder is a no-op:
    every write is already on disk."""
    dst = Path(path).expanduser()
    if dst.exists() and dst.resolve() == self.root.resolve():
        return self.root / self._snap.name
    store.check_output_folder(dst)
    with self._lock, store.write_lock(dst):
        snap = self._snap
        num = store.next_number(dst)
        (dst / "segments").mkdir(parents=True, exist_ok=True)
        manifest = json.loads(json.dumps(snap.manifest))
        renamed = {}
        for i, entry in enumerate(manifest["segments"]):
            new = f"s{num + i:06d}"
            tmp = dst / "segments" / f".tmp-{new}-0"
            shutil.rmtree(tmp, ignore_errors=True)
            keep = entry.get("deleted")
            shutil.copytree(self.root / "segments" / entry["name"], tmp,
                            ignore=lambda d, names, keep=keep: [n for n in names if n.startswith("deleted-") and n != keep])
            tmp.replace(dst / "segments" / new)
            renamed[entry["name"]] = new
            entry["name"] = new
        template = manifest.get("template")
        manifest["template"] = renamed.get(template) if template else None
        version = f"v{num + len(manifest['segments']):06d}"
        store.commit(dst, manifest, version)
    if self._temporary is not None:  # a temporary build now lives at ``path``
        self._temporary()
        self._temporary = None
        self.root, self._segments, self._snap = dst, {}, None
        self._load()
    return dst / version
