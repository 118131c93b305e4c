"""One immutable segment of an index: a FAISS part, its float16 vectors, its metadata, an id lookup.

::

    segments/s000004/ann.faiss        the FAISS part (flat, IVF, IVF-PQ or HNSW); FAISS id = local row
    segments/s000004/vectors.npy      (n, D) float16, L2-normalised: exact re-ranking, exact filtered scans,
                                      compaction and ``iter_vectors`` read it through a memory map
    segments/s000004/meta.arrow       row metadata (Arrow IPC, memory-mapped; :mod:`openeva.index.meta`)
    segments/s000004/ids.npy          (n,) uint64 hashes of the row ids, sorted, and ids_rows.npy (n,) the
                                      local row of each: delete-by-id and the add's duplicate check are a
                                      binary search, not a scan of every id
    segments/s000004/trained.faiss    (a built segment of a trained kind) the empty trained index: later big
                                      adds and merges copy it instead of training again
    segments/s000004/segment.json     rows, dimension, kind, factory

The vectors are copied into the segment, so an index folder stays whole when its embedding folders are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openeva.index import ann
from openeva.index.meta import MetaWriter, read_meta
from openeva.index.store import fsync_dir
from openeva.runtime import atomic_write_json


def id_hashes(ids) -> np.ndarray:
    """(n,) uint64: an 8-byte BLAKE2 hash of each id (collisions at 2**-64 are ignored)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


class Segment:
    """A segment opened for reading; every array is a memory map."""

    def __init__(self, folder: Path):
        self.folder, self.name = folder, folder.name
        try:
            info = json.loads((folder / "segment.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"segment {folder} is missing or corrupt ({err}); rebuild the index with "
                             "`openeva index build`") from None
        self.rows, self.dim, self.kind = int(info["rows"]), int(info["dim"]), info["kind"]
        self.part = ann.read_part(folder / "ann.faiss", self.kind)
        try:
            self.vectors = np.load(folder / "vectors.npy", mmap_mode="r")  # (n, D) float16
            self.meta = read_meta(folder / "meta.arrow")
            self.id_hash = np.load(folder / "ids.npy", mmap_mode="r")
            self.id_rows = np.load(folder / "ids_rows.npy", mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ValueError(f"segment {folder} is corrupt ({err}); rebuild the index with `openeva index build`"
                             ) from None
        if (self.vectors.shape != (self.rows, self.dim) or self.meta.num_rows != self.rows
                or self.part.ntotal != self.rows or len(self.id_hash) != self.rows):
            raise ValueError(f"segment {folder} is inconsistent (vectors {self.vectors.shape}, {self.meta.num_rows} "
                             f"metadata rows, {self.part.ntotal} in FAISS, {self.rows} expected); rebuild the index")
        self.masks: dict = {}  # SearchFilter -> (n,) bool, a few kept

    def rows_for(self, hashes: np.ndarray) -> np.ndarray:
        """Local rows whose id hash is in ``hashes`` (a binary search per hash)."""
        if len(hashes) == 0 or self.rows == 0:
            return np.zeros(0, np.int64)
        lo = np.searchsorted(self.id_hash, hashes, side="left")
        hi = np.searchsorted(self.id_hash, hashes, side="right")
        out = [np.asarray(self.id_rows[a:b]) for a, b in zip(lo, hi) if b > a]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def filter_mask(self, flt) -> np.ndarray:
        mask = self.masks.get(flt)
        if mask is None:
            if len(self.masks) >= 16:
                self.masks.pop(next(iter(self.masks), None), None)
            mask = self.masks[flt] = flt.mask(self.meta)
        return mask

    def tombstones(self, filename: str | None) -> np.ndarray:
        if not filename:
            return np.zeros(0, np.int64)
        try:
            return np.load(self.folder / filename)
        except (OSError, ValueError) as err:
            raise ValueError(f"tombstone file {self.folder / filename} is corrupt ({err}); rebuild the index") from None


@dataclass
class LivePart:
    """A segment as one version sees it: where its rows start, and which are still live."""

    seg: Segment
    base: int
    entry: dict
    live: np.ndarray | None  # (n,) bool, None when nothing is deleted
    n_live: int
    cache: dict = field(default_factory=dict)  # filter -> (allowed mask, count, selector): see Index._allowed


class SegmentWriter:
    """Writes segment ``name`` of ``n`` rows under a temporary name; :meth:`finish` renames it into place."""

    def __init__(self, root: Path, name: str, n: int, dim: int, kind: str, part, schema, trained=None):
        self.root, self.name, self.n, self.dim, self.kind, self.part = root, name, n, dim, kind, part
        self.tmp = root / "segments" / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.trained = trained
        # written sequentially (not through a writable memory map, whose dirty pages would count as this
        # process's memory); read back through :attr:`vectors`
        self._file = open(self.tmp / "vectors.npy", "wb")  # noqa: SIM115 - closed by finish / abort
        np.lib.format.write_array_header_1_0(self._file, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                          "fortran_order": False, "shape": (n, dim)})
        self._data_offset = self._file.tell()
        self._view = None
        self.meta = MetaWriter(self.tmp / "meta.arrow", schema)
        self.pos = 0
        self._hashes: list[np.ndarray] = []

    def add(self, vectors: np.ndarray, rows, to_part: np.ndarray | None = None) -> None:
        """Append (b, D) vectors with their metadata (a list of dicts or an Arrow table) to the vector file and
        the metadata, and to the FAISS part: all of them, or only where ``to_part`` (b,) is True (IVF kinds keep
        their FAISS ids equal to rows, so rows held out of the part now can be added later by :meth:`add_ids`)."""
        b = rows.num_rows if hasattr(rows, "num_rows") else len(rows)
        if b == 0:
            return
        if self.pos + b > self.n:
            raise ValueError(f"segment {self.name}: more rows than the {self.n} announced")
        half = np.ascontiguousarray(vectors, dtype=np.float16)  # (b, D)
        self._file.write(half.tobytes())
        self._view = None
        full = np.ascontiguousarray(half, dtype=np.float32)  # the stored (fp16) values, as FAISS sees them
        if to_part is None:
            self.part.add(full)
        else:
            keep = np.flatnonzero(to_part)
            self.part.add_with_ids(np.ascontiguousarray(full[keep]), (keep + self.pos).astype(np.int64))
        if hasattr(rows, "num_rows"):
            self.meta.write_table(rows)
            self._hashes.append(id_hashes(rows["id"].to_pylist()))
        else:
            self.meta.write(rows)
            self._hashes.append(id_hashes([r["id"] for r in rows]))
        self.pos += b

    @property
    def vectors(self) -> np.ndarray:
        """(pos, D) float16: the rows written so far, read-only through a memory map."""
        if self._view is None:
            self._file.flush()
            self._view = np.memmap(self._file.name, dtype=np.float16, mode="r", offset=self._data_offset,
                                   shape=(self.pos, self.dim)) if self.pos else np.zeros((0, self.dim), np.float16)
        return self._view

    def add_ids(self, rows: np.ndarray) -> None:
        """Add rows already written to the vector file (held out until now) to the FAISS part."""
        if len(rows):
            self.part.add_with_ids(np.ascontiguousarray(self.vectors[rows], dtype=np.float32), rows.astype(np.int64))

    def finish(self) -> str:
        faiss = ann.faiss_module()
        if self.pos != self.n:
            raise ValueError(f"segment {self.name}: {self.pos} rows written, {self.n} announced")
        self.meta.close()
        self._view = None
        self._file.close()
        faiss.write_index(self.part, str(self.tmp / "ann.faiss"))
        if self.trained is not None:
            faiss.write_index(self.trained, str(self.tmp / "trained.faiss"))
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        np.save(self.tmp / "ids.npy", hashes[order])
        np.save(self.tmp / "ids_rows.npy", order.astype(np.int64))
        atomic_write_json(self.tmp / "segment.json", {"rows": self.n, "dim": self.dim, "kind": self.kind})
        for f in self.tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(self.tmp)
        os.replace(self.tmp, self.root / "segments" / self.name)
        fsync_dir(self.root / "segments")
        return self.name

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort on the error path
            self.meta.close()
        with contextlib.suppress(Exception):
            self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
