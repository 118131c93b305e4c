"""Evaluation datasets read from local files, with every input check done before any compute.

Formats (``dataset_type``):

- ``folder``: ``root/<class>/<image>``, one sub-folder per class (torchvision ImageFolder layout).
- ``csv`` / ``jsonl``: one row per image (or per caption) with an image-path column and a label or caption
  column; relative paths are resolved against the file's folder. JSONL captions may be a list.
- ``wds``: WebDataset tar shards (a ``.tar``, a folder of them, or ``shard-{000..009}.tar``) with an image
  key (jpg/png/...) and ``cls`` (integer label) or ``txt`` (captions, one per line) keys.
- ``idx``: MNIST-format IDX files (``*-images-idx3-ubyte`` + ``*-labels-idx1-ubyte``, gzipped or not), as
  MNIST and Fashion-MNIST ship.
- ``coco``: a COCO-captions JSON (``images`` + ``annotations``), for retrieval.

Images are decoded lazily; an image that fails to decode becomes ``None`` in :class:`ImageDataset` and is
counted as skipped by the encoder instead of stopping the run.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

DATASET_TYPES = ("auto", "folder", "csv", "jsonl", "wds", "idx", "coco")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")

IMAGE_COLUMNS = ("filepath", "image", "image_path", "img", "path", "file", "filename", "file_name")
LABEL_COLUMNS = ("label", "class", "target", "cls", "class_id")
CAPTION_COLUMNS = ("caption", "captions", "text", "title", "txt", "sentence", "sentences")

# Errors PIL raises on truncated or corrupt files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------- image lists
class ImageList:
    """An indexable list of images that decode on demand; ``ids`` name each image for reports."""

    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Image.Image:
        """Return the RGB image; raises on decode failure (see ``_DECODE_ERRORS``)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return _hash_strings(self.ids)


class FileImages(ImageList):
    def __init__(self, paths: Sequence[str]):
        self.ids = [str(p) for p in paths]

    def load(self, index: int) -> Image.Image:
        with Image.open(self.ids[index]) as img:
            img.load()
            return img.convert("RGB")


@dataclass(frozen=True)
class TarMember:
    tar_path: str
    offset: int  # byte offset of the member's data inside the tar
    size: int
    name: str


class TarImages(ImageList):
    """Images stored inside tar shards, read by seeking to the member's data (no extraction)."""

    def __init__(self, members: Sequence[TarMember]):
        self.members = list(members)
        self.ids = [f"{m.tar_path}::{m.name}" for m in self.members]

    def load(self, index: int) -> Image.Image:
        member = self.members[index]
        with open(member.tar_path, "rb") as f:
            f.seek(member.offset)
            data = f.read(member.size)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")


class ArrayImages(ImageList):
    """uint8 pixel arrays (N, H, W) or (N, H, W, 3), e.g. from IDX files."""

    def __init__(self, pixels: np.ndarray, id_prefix: str):
        if pixels.ndim not in (3, 4):
            raise ValueError(f"expected image array of shape (N, H, W[, C]), got {pixels.shape}")
        self.pixels = pixels
        self.ids = [f"{id_prefix}[{i}]" for i in range(len(pixels))]

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.pixels[index])).convert("RGB")

    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()


class ImageDataset(torch.utils.data.Dataset):
    """(transformed image or None, index) pairs; None marks an image that failed to decode."""

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            img = self.images.load(index)
        except _DECODE_ERRORS:
            return None, index
        return self.transform(img), index


# --------------------------------------------------------------------------------------------- datasets
@dataclass
class ClassificationData:
    name: str
    images: ImageList
    labels: list[int]
    classnames: list[str]
    skipped: list[str] = field(default_factory=list)  # samples dropped while indexing (no image member)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def fingerprint(self) -> str:
        return _hash_strings([self.images.fingerprint(), _hash_strings(map(str, self.labels))])


@dataclass
class RetrievalData:
    name: str
    images: ImageList
    captions: list[list[str]]  # captions[i]: the captions of image i (one or more)
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        return self.images.fingerprint()


# --------------------------------------------------------------------------------------------- detection
def detect_format(path: str | os.PathLike) -> str:
    """Guess the dataset type from a path; raises ValueError naming the path when it cannot."""
    path_str = str(path)
    if "{" in path_str and ".tar" in path_str:
        return "wds"
    p = Path(path_str)
    if not p.exists():
        raise FileNotFoundError(f"dataset path does not exist: {p}")
    if p.is_dir():
        entries = list(p.iterdir())
        if any(e.is_file() and e.name.endswith(".tar") for e in entries):
            return "wds"
        if any(e.is_file() and _is_idx_name(e.name) for e in entries):
            return "idx"
        if any(e.is_dir() for e in entries):
            return "folder"
        raise ValueError(
            f"cannot detect the dataset format of folder {p}: expected class sub-folders, .tar shards or IDX "
            f"files; pass dataset_type explicitly (one of {', '.join(DATASET_TYPES[1:])})"
        )
    name = p.name.lower()
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".tar"):
        return "wds"
    if _is_idx_name(name):
        return "idx"
    if name.endswith(".json"):
        return "coco"
    raise ValueError(
        f"unknown dataset format for {p}: supported are {', '.join(DATASET_TYPES[1:])} "
        "(folder, .csv/.tsv, .jsonl, .tar shards, IDX files, COCO-captions .json)"
    )


def _resolve_type(path, dataset_type: str) -> str:
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"unknown dataset type {dataset_type!r}; expected one of {', '.join(DATASET_TYPES)}")
    if dataset_type == "auto":
        return detect_format(path)
    if "{" not in str(path) and not Path(path).exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    return dataset_type


def dataset_name_from_path(path, split: str | None = None) -> str:
    p = Path(str(path).split("{")[0])
    stem = p.name if p.is_dir() or not p.suffix else p.stem
    stem = stem.strip("-_") or "dataset"
    return f"{stem}_{split}" if split else stem


# --------------------------------------------------------------------------------------------- loaders
def load_classification_dataset(
    path,
    dataset_type: str = "auto",
    classnames: Sequence[str] | None = None,
    split: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    name: str | None = None,
) -> ClassificationData:
    """Index a labelled image dataset and check its labels against ``classnames`` (if given).

    ``split`` picks the IDX file pair when a folder holds several (``train`` / ``test``).
    """
    kind = _resolve_type(path, dataset_type)
    classnames = list(classnames) if classnames is not None else None
    if kind == "folder":
        data = _load_folder(Path(path), classnames)
    elif kind in ("csv", "jsonl"):
        rows = _read_rows(Path(path), kind)
        data = _classification_from_rows(Path(path), rows, classnames, image_key, label_key)
    elif kind == "wds":
        data = _classification_from_wds(path, classnames)
    elif kind == "idx":
        data = _load_idx_dataset(Path(path), classnames, split)
    else:
        raise ValueError(f"dataset type {kind!r} holds captions, not class labels; use it for retrieval")
    if len(data.labels) == 0:
        raise ValueError(f"dataset {path} contains no labelled images")
    data.name = name or dataset_name_from_path(path, split if kind == "idx" else None)
    return data


def load_retrieval_dataset(
    path,
    dataset_type: str = "auto",
    image_key: str | None = None,
    caption_key: str | None = None,
    name: str | None = None,
) -> RetrievalData:
    """Index an image-caption dataset; rows sharing an image path are grouped into one image."""
    kind = _resolve_type(path, dataset_type)
    if kind in ("csv", "jsonl"):
        data = _retrieval_from_rows(Path(path), _read_rows(Path(path), kind), image_key, caption_key)
    elif kind == "wds":
        data = _retrieval_from_wds(path)
    elif kind == "coco":
        data = _retrieval_from_coco(Path(path))
    else:
        raise ValueError(f"dataset type {kind!r} has no captions; retrieval needs csv, jsonl, wds or coco")
    if len(data.captions) == 0:
        raise ValueError(f"dataset {path} contains no captioned images")
    data.name = name or dataset_name_from_path(path)
    return data


def _check_classnames(classnames: list[str] | None, num_classes: int, what: str) -> None:
    if classnames is not None and len(classnames) != num_classes:
        raise ValueError(
            f"class names do not match the dataset: {len(classnames)} class names given but {what} "
            f"has {num_classes} classes"
        )


def _load_folder(root: Path, classnames) -> ClassificationData:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders")
    _check_classnames(classnames, len(class_dirs), f"folder {root}")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            f for f in class_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(f"class folder {class_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    names = classnames or [d.name.replace("_", " ") for d in class_dirs]
    return ClassificationData("", FileImages(paths), labels, names)


def _read_rows(path: Path, kind: str) -> list[dict]:
    if kind == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            rows = list(csv.DictReader(f, delimiter=delimiter))
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: invalid JSON line ({e.msg})") from e
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def _pick_column(rows: list[dict], explicit: str | None, candidates: Sequence[str], what: str, path) -> str:
    columns = list(rows[0].keys())
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(f"{path}: {what} column {explicit!r} not found; columns are {columns}")
        return explicit
    for c in candidates:
        if c in columns:
            return c
    raise ValueError(f"{path}: no {what} column found (looked for {list(candidates)}); columns are {columns}")


def _resolve_path(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def _labels_to_ids(values: list, classnames: list[str] | None, where) -> tuple[list[int], list[str]]:
    """Integer labels index ``classnames``; string labels are class names (sorted when none are given)."""
    as_text = [str(v).strip() for v in values]
    if all(re.fullmatch(r"-?\d+", v) for v in as_text):
        ids = [int(v) for v in as_text]
        if min(ids) < 0:
            raise ValueError(f"{where}: negative class label {min(ids)}")
        num_classes = max(ids) + 1
        if classnames is not None and num_classes > len(classnames):
            raise ValueError(
                f"class names do not match the labels of {where}: label {max(ids)} needs at least "
                f"{num_classes} class names but {len(classnames)} were given"
            )
        return ids, classnames or [str(i) for i in range(num_classes)]
    names = classnames or sorted(set(as_text))
    index = {n: i for i, n in enumerate(names)}
    repeated = {n for n in index if names.count(n) > 1} if len(index) < len(names) else set()
    ambiguous = sorted(set(as_text) & repeated)
    if ambiguous:
        raise ValueError(f"labels {ambiguous[:10]} of {where} match several class names; use integer labels")
    unknown = sorted(set(as_text) - set(index))
    if unknown:
        raise ValueError(f"class names do not match the labels of {where}: labels {unknown[:10]} are not class names")
    return [index[v] for v in as_text], names


def _classification_from_rows(path: Path, rows, classnames, image_key, label_key) -> ClassificationData:
    img_col = _pick_column(rows, image_key, IMAGE_COLUMNS, "image", path)
    label_col = _pick_column(rows, label_key, LABEL_COLUMNS, "label", path)
    missing = [i for i, r in enumerate(rows) if r.get(label_col) in (None, "")]
    if missing:
        raise ValueError(f"{path}: row {missing[0] + 1} has an empty {label_col!r} value")
    labels, names = _labels_to_ids([r[label_col] for r in rows], classnames, path)
    paths = [_resolve_path(path.parent, str(r[img_col])) for r in rows]
    return ClassificationData("", FileImages(paths), labels, names)


def _as_caption_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _retrieval_from_rows(path: Path, rows, image_key, caption_key) -> RetrievalData:
    img_col = _pick_column(rows, image_key, IMAGE_COLUMNS, "image", path)
    cap_col = _pick_column(rows, caption_key, CAPTION_COLUMNS, "caption", path)
    grouped: dict[str, list[str]] = {}
    for r in rows:
        grouped.setdefault(_resolve_path(path.parent, str(r[img_col])), []).extend(_as_caption_list(r.get(cap_col)))
    empty = [p for p, caps in grouped.items() if not caps]
    if empty:
        raise ValueError(f"{path}: image {empty[0]} has no caption in column {cap_col!r}")
    return RetrievalData("", FileImages(list(grouped)), list(grouped.values()))


def _retrieval_from_coco(path: Path) -> RetrievalData:
    with open(path, encoding="utf-8") as f:
        ann = json.load(f)
    if not isinstance(ann, dict) or "images" not in ann or "annotations" not in ann:
        raise ValueError(f"{path}: unknown JSON format; expected COCO captions with 'images' and 'annotations'")
    captions: dict = {img["id"]: [] for img in ann["images"]}
    for a in ann["annotations"]:
        if a["image_id"] in captions:
            captions[a["image_id"]].append(a["caption"])
    image_dir = path.parent
    for candidate in ("images", path.stem.replace("captions_", "")):
        if (path.parent / candidate).is_dir():
            image_dir = path.parent / candidate
            break
    images = [img for img in ann["images"] if captions[img["id"]]]
    paths = [_resolve_path(image_dir, img["file_name"]) for img in images]
    return RetrievalData("", FileImages(paths), [captions[img["id"]] for img in images])


# --------------------------------------------------------------------------------------------- webdataset
def expand_braces(pattern: str) -> list[str]:
    """Expand numeric brace ranges as webdataset writes them: ``a-{000..002}.tar`` -> 3 paths."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


def _shard_paths(path) -> list[str]:
    p = str(path)
    if "{" in p:
        shards = expand_braces(p)
    elif Path(p).is_dir():
        shards = sorted(str(s) for s in Path(p).glob("*.tar"))
    else:
        shards = [p]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shard not found: {missing[0]}")
    if not shards:
        raise ValueError(f"no .tar shards found in {p}")
    return shards


def _wds_samples(path):
    """Yield (sample key, {extension: TarMember}) grouped as webdataset does (key = name up to first dot)."""
    for shard in _shard_paths(path):
        try:
            with tarfile.open(shard, "r:") as tar:
                groups: dict[str, dict[str, TarMember]] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, base = os.path.split(m.name)
                    if "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    key = f"{folder}/{stem}" if folder else stem
                    groups.setdefault(key, {})[ext.lower()] = TarMember(shard, m.offset_data, m.size, m.name)
        except tarfile.TarError as e:
            raise ValueError(f"cannot read webdataset shard {shard}: {e}") from e
        for key, members in groups.items():
            yield f"{shard}::{key}", members


def _read_member(member: TarMember) -> bytes:
    with open(member.tar_path, "rb") as f:
        f.seek(member.offset)
        return f.read(member.size)


def _image_member(members: dict[str, TarMember]) -> TarMember | None:
    for ext in WDS_IMAGE_KEYS:
        if ext in members:
            return members[ext]
    return None


def _classification_from_wds(path, classnames) -> ClassificationData:
    images, raw_labels, skipped = [], [], []
    for key, members in _wds_samples(path):
        img, cls = _image_member(members), members.get("cls")
        if img is None:  # e.g. a failed download in the shard writer: counted as skipped
            skipped.append(key)
            continue
        if cls is None:
            raise ValueError(f"webdataset sample {key} has no 'cls' key (keys: {sorted(members)})")
        images.append(img)
        raw_labels.append(_read_member(cls).decode("utf-8").strip())
    labels, names = _labels_to_ids(raw_labels, classnames, path) if raw_labels else ([], classnames or [])
    return ClassificationData("", TarImages(images), labels, names, skipped)


def _retrieval_from_wds(path) -> RetrievalData:
    images, captions, skipped = [], [], []
    for key, members in _wds_samples(path):
        img, txt = _image_member(members), members.get("txt")
        if img is None:
            skipped.append(key)
            continue
        if txt is None:
            raise ValueError(f"webdataset sample {key} has no 'txt' key (keys: {sorted(members)})")
        caps = [line.strip() for line in _read_member(txt).decode("utf-8").splitlines() if line.strip()]
        if not caps:
            raise ValueError(f"webdataset sample {key} has an empty 'txt' caption")
        images.append(img)
        captions.append(caps)
    return RetrievalData("", TarImages(images), captions, skipped)


# --------------------------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _is_idx_name(name: str) -> bool:
    return re.search(r"idx\d-ubyte(\.gz)?$", name) is not None


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip detected from the magic bytes, not the name)."""
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


def _find_idx_pair(path: Path, split: str | None) -> tuple[Path, Path]:
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


def _load_idx_dataset(path: Path, classnames, split) -> ClassificationData:
    images_path, labels_path = _find_idx_pair(path, split)
    pixels, labels = read_idx(images_path), read_idx(labels_path)
    if pixels.ndim != 3 or labels.ndim != 1 or len(pixels) != len(labels):
        raise ValueError(f"IDX pair {images_path.name}/{labels_path.name} has shapes {pixels.shape} and {labels.shape}")
    ids, names = _labels_to_ids(labels.tolist(), classnames, labels_path)
    return ClassificationData("", ArrayImages(pixels.astype(np.uint8), str(images_path)), ids, names)


def _hash_strings(items) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
