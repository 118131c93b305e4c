"""A random-access view of an image collection, for embedding, indexing, classifying and serving.

``open_collection(src)`` reads a folder of images (recursive, same-name ``.txt`` captions), a CSV/TSV/JSONL
index (an image column, an optional caption column) or WebDataset shards (``a-{000..009}.tar``, a ``.tar``,
or a folder of them); each may be a local path or a URL in the grammar of :mod:`openeva.data.sources`
(``s3://bucket/photos/``, ``s3://bucket/captions.csv`` with image paths relative to its URL). Every source gives
the same small interface (:class:`ImageCollection`): a stable key per item, a path (a file, or
``shard.tar/member-key``), an optional caption and a ``load(i)`` that decodes an RGB image or raises one of
:data:`DECODE_ERRORS`.

Built on the data layer's readers, the ones training and evaluation use (format detection, index rows and
column choice, the one shard grammar and tar member index, the image opener and its decode errors); this
module only adds the uniform interface.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from openeva.data.captions import clean_caption
from openeva.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, open_rgb
from openeva.data.index import CAPTION_COLUMNS, IMAGE_COLUMNS, pick_column, read_index, resolve_listed_path
from openeva.data.labelled import detect_format
from openeva.data.sources import is_local, list_files, parent_of, read_bytes, read_text
from openeva.data.webdataset import TarMember, image_member, index_shards, shard_paths

__all__ = ["DECODE_ERRORS", "ImageCollection", "load_source", "open_collection", "read_source_bytes"]
# DECODE_ERRORS: what ``load`` may raise for a bad item (missing, truncated, corrupt, hostile); callers skip and
# count these.


class ImageCollection:
    """Items ``0..len-1``: ``key(i)`` (unique, stable), ``path(i)``, ``caption(i)``, ``load(i)``.

    ``skipped`` lists entries dropped while indexing the source (non-image files in a folder, tar samples
    without an image), as ``"path: reason"`` strings.
    """

    kind: str = ""

    def __init__(self, src: str, keys: list[str], paths: list[str], captions: list[str | None],
                 skipped: list[str] | None = None):
        if not (len(keys) == len(paths) == len(captions)):
            raise ValueError("keys, paths and captions must have the same length")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{src}: duplicate item keys")
        self.src = src
        self._keys, self._paths, self._captions = keys, paths, captions
        self.skipped = list(skipped or [])

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[i]

    def path(self, i: int) -> str:
        return self._paths[i]

    def caption(self, i: int) -> str | None:
        return self._captions[i]

    def load(self, i: int) -> Image.Image:
        return open_rgb(self._paths[i])

    def extra(self, i: int) -> dict:
        """Other metadata of item ``i`` that the source brought (a CSV/JSONL row's other columns)."""
        return {}

    def source(self, i: int) -> dict:
        """Where item ``i``'s bytes live, as JSON-able data (an index keeps it to serve thumbnails)."""
        return {"path": self._paths[i]}

    def fingerprint(self) -> str:
        """Hash of the ordered keys: two runs over the same listing agree, a changed listing does not."""
        h = hashlib.sha256(self.kind.encode())
        for k in self._keys:
            h.update(k.encode("utf-8") + b"\0")
        return h.hexdigest()


class FolderCollection(ImageCollection):
    kind = "folder"


class IndexFileCollection(ImageCollection):
    kind = "rows"

    def __init__(self, src: str, keys, paths, captions, skipped=None, extras: list[dict] | None = None):
        super().__init__(src, keys, paths, captions, skipped)
        self._extras = extras or [{} for _ in keys]

    def extra(self, i: int) -> dict:
        """The row's other columns (not image or caption): an index keeps them for ``where`` filters."""
        return self._extras[i]


class TarCollection(ImageCollection):
    kind = "wds"

    def __init__(self, src: str, keys, paths, captions, members: list[TarMember], skipped=None):
        super().__init__(src, keys, paths, captions, skipped)
        self._members = members

    def load(self, i: int) -> Image.Image:
        return open_rgb(self._members[i].read())

    def source(self, i: int) -> dict:
        m = self._members[i]
        return {"path": self._paths[i], "tar": m.tar_path, "offset": m.offset, "size": m.size}


def _member_of(source: dict) -> TarMember:
    return TarMember(source["tar"], int(source["offset"]), int(source["size"]), "")


def load_source(source: dict) -> Image.Image:
    """Decode the image a :meth:`ImageCollection.source` record points at."""
    if "tar" in source:
        return open_rgb(_member_of(source).read())
    return open_rgb(source["path"])


def read_source_bytes(source: dict) -> bytes:
    """The raw bytes of the image a source record points at."""
    if "tar" in source:
        return _member_of(source).read()
    return read_bytes(source["path"])


def open_collection(src, image_key: str | None = None, caption_key: str | None = None) -> ImageCollection:
    """The collection at ``src`` (folder, .csv/.tsv/.jsonl, .tar / brace pattern / folder of shards).

    Raises FileNotFoundError / ValueError with the path for a missing source, an unknown format, a missing
    column or an empty collection, before any compute.
    """
    src_str = str(src) if not is_local(str(src)) else os.path.expanduser(str(src))  # "~/Pictures" from Python
    p = Path(src_str)
    if "{" not in src_str and is_local(src_str) and not p.exists():
        raise FileNotFoundError(f"source not found: {src_str}")
    if is_local(src_str) and p.is_dir() and not any(e.is_file() and e.name.endswith(".tar") for e in p.iterdir()):
        coll: ImageCollection = _open_folder(p)
    else:
        kind = detect_format(src_str)
        if kind in ("csv", "jsonl"):
            coll = _open_rows(p if is_local(src_str) else src_str, image_key, caption_key)
        elif kind == "wds":
            coll = _open_tars(src_str)
        elif kind == "folder" and not is_local(src_str):
            coll = _open_remote_folder(src_str)
        else:
            raise ValueError(f"{src_str}: unsupported source type {kind!r}; expected a folder of images, a "
                             ".csv/.tsv/.jsonl index or .tar shards")
    if len(coll) == 0:
        why = f" ({len(coll.skipped)} entries skipped, e.g. {coll.skipped[0]})" if coll.skipped else ""
        raise ValueError(f"{src_str}: no images found{why}")
    return coll


def _open_folder(root: Path) -> FolderCollection:
    keys, paths, captions, skipped = [], [], [], []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.name.startswith(".") or f.suffix.lower() == ".txt":
            continue
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(f"{f}: not an image file extension")
            continue
        keys.append(f.relative_to(root).as_posix())
        paths.append(str(f))
        txt = f.with_suffix(".txt")
        captions.append(clean_caption(txt.read_text(encoding="utf-8", errors="replace")) if txt.is_file() else None)
    return FolderCollection(str(root), keys, paths, captions, skipped)


def _open_remote_folder(root: str) -> FolderCollection:
    """A folder in a store (listed once, recursively); captions from same-name ``.txt`` objects."""
    files = list_files(root, (*IMAGE_EXTENSIONS, ".txt"), recursive=True)
    texts = {f.rsplit(".", 1)[0] for f in files if f.lower().endswith(".txt")}
    prefix = root.rstrip("/") + "/"
    keys, paths, captions = [], [], []
    for f in files:
        if f.lower().endswith(".txt"):
            continue
        stem = f.rsplit(".", 1)[0]
        keys.append(f[len(prefix):] if f.startswith(prefix) else f.rsplit("/", 1)[-1])
        paths.append(f)
        captions.append(clean_caption(read_text(stem + ".txt")) if stem in texts else None)
    return FolderCollection(root, keys, paths, captions)


def _open_rows(path: Path | str, image_key, caption_key) -> IndexFileCollection:
    rows, columns = read_index(path)
    img_col = pick_column(columns, image_key, IMAGE_COLUMNS, "image", path)
    if caption_key is not None:
        cap_col = pick_column(columns, caption_key, CAPTION_COLUMNS, "caption", path)
    else:
        cap_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    keys, paths, captions, skipped, seen, extras = [], [], [], [], set(), []
    for line, row in enumerate(rows, start=1):
        value = row.get(img_col)
        if not isinstance(value, str) or not value.strip():
            skipped.append(f"{path} row {line}: empty {img_col!r}")
            continue
        key = value.strip()
        if key in seen:  # several captions of one image: one item, its first caption
            continue
        seen.add(key)
        keys.append(key)
        paths.append(str(resolve_listed_path(key, path.parent if isinstance(path, Path) else parent_of(path))))
        captions.append(clean_caption(row.get(cap_col)) if cap_col else None)
        extras.append({c: v for c, v in row.items() if c not in (img_col, cap_col) and v not in (None, "")})
    return IndexFileCollection(str(path), keys, paths, captions, skipped, extras)


def _open_tars(src: str) -> TarCollection:
    keys, paths, captions, members, skipped = [], [], [], [], []
    samples = ((shard, key, files) for shard, index in index_shards(shard_paths(src)) for key, files in index.items())
    for shard, key, files in samples:
        img = image_member(files)
        if img is None:
            skipped.append(f"{shard}/{key}: no image member (keys: {sorted(files)})")
            continue
        caption = None
        if "txt" in files:
            caption = clean_caption(files["txt"].read().decode("utf-8", errors="replace"))
        keys.append(f"{Path(shard).name}/{key}")
        paths.append(f"{shard}/{key}")
        captions.append(caption or None)
        members.append(img)
    return TarCollection(src, keys, paths, captions, members, skipped)


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from an image header without decoding its pixels (for pixel-count limits)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size
