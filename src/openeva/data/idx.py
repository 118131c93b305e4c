"""IDX files, the format MNIST and Fashion-MNIST ship in (``*-images-idx3-ubyte`` + ``*-labels-idx1-ubyte``,
gzipped or not, e.g. Debian's ``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``)."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

__all__ = ["find_idx_pair", "is_idx_name", "read_idx"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def is_idx_name(name: str) -> bool:
    return re.search(r"idx\d-ubyte(\.gz)?$", name) is not None


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip detected from the magic bytes, not the name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header promises shape {shape} ({expected} bytes) but has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_pair(path: Path, split: str | None) -> tuple[Path, Path]:
    """(images file, labels file) for an IDX images file, or the ``split`` (train / test) pair of a folder."""
    path = Path(path)
    if path.is_file():
        images = path
    else:
        candidates = sorted(f for f in path.iterdir() if re.search(r"images-idx3-ubyte(\.gz)?$", f.name))
        if split is not None and len(candidates) > 1:
            prefixes = ("t10k", "test") if split in ("test", "val", "t10k") else (split,)
            candidates = [f for f in candidates if f.name.startswith(prefixes)]
        if len(candidates) != 1:
            raise ValueError(
                f"expected exactly one *-images-idx3-ubyte file in {path} for split {split!r}, "
                f"found {[c.name for c in candidates]}"
            )
        images = candidates[0]
    if "images-idx3" not in images.name:
        raise ValueError(f"{images} is not an IDX images file (name should contain 'images-idx3-ubyte')")
    stem = images.name.replace("images-idx3", "labels-idx1")
    for name in (stem, stem + ".gz", stem.removesuffix(".gz")):
        if (images.parent / name).is_file():
            return images, images.parent / name
    raise FileNotFoundError(f"no labels file {stem} next to {images}")
