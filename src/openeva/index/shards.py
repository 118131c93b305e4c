"""Read ``openeva embed`` output folders shard by shard, without loading every vector.

The index builder streams these: each shard's ``(n, D)`` vectors are memory-mapped (``np.load(mmap_mode="r")``)
and its metadata rows parsed from its ``.jsonl``; only one shard is in memory at a time. An embedding folder at
a URL is copied to a local mirror first (memory maps need local files).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openeva.data.sources import fetch_files, is_local, local_mirror


@dataclass
class EmbeddingFolder:
    """A complete ``openeva embed`` output: its manifest and shard files."""

    root: Path
    manifest: dict

    @classmethod
    def open(cls, path) -> EmbeddingFolder:
        root = fetch_embeddings(path)
        if not root.is_dir():
            raise FileNotFoundError(f"embedding folder {root} does not exist; run `openeva embed SRC --out {root}`")
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"{root} is not an embedding folder (no manifest.json); run `openeva embed` "
                                    "first")
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except ValueError as err:
            raise ValueError(f"{root}/manifest.json is not valid JSON ({err}); rerun `openeva embed`") from None
        if manifest.get("status") != "complete":
            raise ValueError(f"embedding run in {root} is not complete ({manifest.get('status')}); rerun "
                             "`openeva embed` with the same arguments to finish it")
        return cls(root, manifest)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest.get("count") or 0)

    def shard_paths(self) -> list[Path]:
        return [self.root / "shards" / f"{s:05d}" for s in range(int(self.manifest["num_shards"]))]

    def vectors(self, base: Path) -> np.ndarray:
        """(n, D) memory-mapped vectors of one shard."""
        path = Path(f"{base}.npy")
        try:
            v = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path} ({err}); rerun `openeva embed` into a new folder") from None
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"{path} has shape {v.shape}, the manifest says dimension {self.dim}")
        return v

    def rows(self, base: Path) -> list[dict]:
        path = base.with_suffix(".jsonl")
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line]
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path} ({err}); rerun `openeva embed` into a new folder") from None

    def iter_meta(self) -> Iterator[list[dict]]:
        for base in self.shard_paths():
            yield self.rows(base)

    def iter_chunks(self) -> Iterator[tuple[np.ndarray, list[dict]]]:
        """(vectors (n, D) memory-mapped, rows) shard by shard."""
        for base in self.shard_paths():
            vectors, rows = self.vectors(base), self.rows(base)
            if len(vectors) != len(rows):
                raise ValueError(f"{base}.npy has {len(vectors)} vectors but {base}.jsonl {len(rows)} rows; rerun "
                                 "`openeva embed` into a new folder")
            yield vectors, rows


def fetch_embeddings(path) -> Path:
    """The local folder of an ``openeva embed`` output: ``path`` itself, or for a URL a fresh local copy of it
    (its manifest and shards; the index memory-maps local files only)."""
    if is_local(str(path)):
        return Path(str(path).removeprefix("file://")).expanduser()
    remote = str(path).rstrip("/")
    local = local_mirror(remote) / "copy"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    if not fetch_files(remote, local, "manifest.json"):
        raise FileNotFoundError(f"{remote} is not an embedding folder (no manifest.json); run `openeva embed` first")
    fetch_files(remote, local, "shards/*")
    return local
