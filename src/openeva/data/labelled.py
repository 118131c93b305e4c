"""Labelled and captioned image collections from local files, with every input check done before any compute.

Formats (``dataset_type``):

- ``folder``: ``root/<class>/<image>``, one sub-folder per class (torchvision ImageFolder layout). Class names
  given for a folder are matched to the sub-folder names by name (:func:`match_folder_classes`), never by position.
- ``csv`` / ``jsonl``: one row per image (or per caption) with an image-path column and a label or caption
  column (:mod:`openeva.data.index`). JSONL captions may be a list.
- ``wds``: tar shards (a ``.tar``, a folder of them, or a pattern such as ``shard-{000..009}.tar`` in the one
  grammar of :func:`~openeva.data.webdataset.expand_urls`) with an image member and ``cls`` (integer label)
  or ``txt`` (captions, one per line).
- ``idx``: MNIST-format IDX files (:mod:`openeva.data.idx`).
- ``coco``: a COCO-captions JSON (``images`` + ``annotations``), for retrieval.

Images are decoded lazily (:mod:`openeva.data.image_lists`). Folders, indexes and shards may be URLs
(:mod:`openeva.data.sources`): ``s3://bucket/classes/`` (one sub-folder per class), ``s3://bucket/labels.csv``
(image paths relative to the index's URL); IDX and COCO files are read from a local disk only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from openeva.data.idx import find_idx_pair, is_idx_name, read_idx
from openeva.data.image_lists import ArrayImages, FileImages, ImageList, TarImages, hash_strings
from openeva.data.images import IMAGE_EXTENSIONS, list_images
from openeva.data.index import (
    CAPTION_COLUMNS, IMAGE_COLUMNS, LABEL_COLUMNS, pick_column, read_index, resolve_listed_path,
)
from openeva.data.sources import is_http, is_local, list_dirs, list_files, parent_of, source_kind
from openeva.data.webdataset import image_member, index_shards, shard_paths

DATASET_TYPES = ("auto", "folder", "csv", "jsonl", "wds", "idx", "coco")


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
        return hash_strings([self.images.fingerprint(), hash_strings(map(str, self.labels))])


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
    if ".tar" in path_str and ("{" in path_str or "::" in path_str or ";" in path_str):
        return "wds"
    if not is_local(path_str):
        return _detect_remote(path_str)
    p = Path(path_str)
    if not p.exists():
        raise FileNotFoundError(f"dataset path does not exist: {p}")
    if p.is_dir():
        entries = list(p.iterdir())
        if any(e.is_file() and e.name.endswith(".tar") for e in entries):
            return "wds"
        if any(e.is_file() and is_idx_name(e.name) for e in entries):
            return "idx"
        if any(e.is_dir() and not e.name.startswith(".") for e in entries) or any(
                e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
            return "folder"
        raise ValueError(
            f"cannot detect the dataset format of folder {p}: expected images, class sub-folders, .tar shards or IDX "
            f"files; pass dataset_type explicitly (one of {', '.join(DATASET_TYPES[1:])})"
        )
    name = p.name.lower()
    if name.endswith((".csv", ".tsv", ".tab")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".tar"):
        return "wds"
    if is_idx_name(name):
        return "idx"
    if name.endswith(".json"):
        return "coco"
    raise ValueError(
        f"unknown dataset format for {p}: supported are {', '.join(DATASET_TYPES[1:])} "
        "(folder, .csv/.tsv, .jsonl, .tar shards, IDX files, COCO-captions .json)"
    )


_REMOTE_KINDS = ("folder", "csv", "jsonl", "wds")  # what is read from a URL (IDX and COCO need a local disk)


def _detect_remote(url: str) -> str:
    """A URL or ``pipe:`` source: tar shards (one, or a folder / prefix holding them), a caption or label index
    (.csv/.tsv/.jsonl), or a folder of images (with class sub-folders or .txt captions)."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(".tar") or url.startswith("pipe:"):
        return "wds"
    kind = source_kind(url)
    if kind is None:
        raise FileNotFoundError(f"dataset path does not exist: {url}" + (
            " (an HTTP folder is written with a trailing '/')" if is_http(url) and "." not in name else ""))
    if kind == "file":
        if name.endswith((".csv", ".tsv", ".tab")):
            return "csv"
        if name.endswith((".jsonl", ".ndjson")):
            return "jsonl"
        raise ValueError(f"{url}: from a URL, openeva reads WebDataset .tar shards, .csv/.tsv/.jsonl indexes and "
                         "folders of images; copy other kinds (IDX, COCO .json) to a local disk")
    if list_files(url, ".tar"):
        return "wds"
    if list_dirs(url) or list_files(url, IMAGE_EXTENSIONS):
        return "folder"
    raise ValueError(f"cannot detect the dataset format of folder {url}: expected images, class sub-folders or .tar "
                     "shards in it")


def _resolve_type(path, dataset_type: str) -> str:
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"unknown dataset type {dataset_type!r}; expected one of {', '.join(DATASET_TYPES)}")
    if dataset_type == "auto":
        return detect_format(path)
    if "{" not in str(path) and source_kind(path) is None and not (is_http(path) and str(path).endswith("/")):
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if dataset_type not in _REMOTE_KINDS and not is_local(str(path)):
        raise ValueError(f"{path}: dataset type {dataset_type!r} is read from a local disk only; copy it there "
                         f"(from a URL openeva reads {', '.join(_REMOTE_KINDS)})")
    return dataset_type


def _as_source(path) -> Path | str:
    """A local path as a Path, a URL as it is."""
    return Path(path) if is_local(str(path)) else str(path)


def dataset_name_from_path(path, split: str | None = None) -> str:
    p = Path(str(path).split("{")[0].rstrip("/"))
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
        data = _load_folder(_as_source(path), classnames)
    elif kind in ("csv", "jsonl"):
        data = _classification_from_rows(_as_source(path), classnames, image_key, label_key)
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
        data = _retrieval_from_rows(_as_source(path), image_key, caption_key)
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


# --------------------------------------------------------------------------------------------- classes
def normalise_classname(name: str) -> str:
    """The form under which a class name and a folder name match: lower case, no ``_ - / space``."""
    return re.sub(r"[\s_\-/]+", "", str(name).lower())


def match_folder_classes(folders: Sequence[str], classnames: Sequence[str], where) -> list[int]:
    """For each class folder, the index of its class name, matched by :func:`normalise_classname`.

    Never positional: every folder needs a name and every name a folder; ValueError lists both sides otherwise.
    """
    index: dict[str, int] = {}
    for i, name in enumerate(classnames):
        index.setdefault(normalise_classname(name), i)
    matched = [index.get(normalise_classname(folder)) for folder in folders]
    unmatched_folders = [f for f, m in zip(folders, matched) if m is None]
    used = {m for m in matched if m is not None}
    unmatched_names = [n for i, n in enumerate(classnames) if i not in used]
    if unmatched_folders or unmatched_names:
        count = (f"{len(classnames)} class names given but folder {where} has {len(folders)} classes; "
                 if len(classnames) != len(folders) else "")
        raise ValueError(
            f"class names do not match the dataset: {count}class names are matched to the folder names (ignoring "
            f"case, '_', '-', '/' and spaces), not by position. Folders without a class name: "
            f"{unmatched_folders[:20]}; class names without a folder: {unmatched_names[:20]}")
    return matched


def labels_to_ids(values: list, classnames: list[str] | None, where) -> tuple[list[int], list[str]]:
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


def align_classes(data: ClassificationData, classnames: Sequence[str], what: str) -> ClassificationData:
    """``data`` with its labels re-indexed onto ``classnames`` by name (the training set defines the classes)."""
    if list(data.classnames) == list(classnames):
        return data
    index = {n: i for i, n in enumerate(classnames)}
    unknown = sorted({data.classnames[label] for label in data.labels} - set(index))
    if unknown:
        raise ValueError(f"{what} has classes {unknown[:10]} that the training data does not have")
    return ClassificationData(data.name, data.images, [index[data.classnames[label]] for label in data.labels],
                              list(classnames), data.skipped)


# --------------------------------------------------------------------------------------------- readers
def _load_folder(root: Path | str, classnames) -> ClassificationData:
    class_dirs = list_dirs(root)  # paths, or URLs of a folder in a store
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders")
    folder_names = [d.rstrip("/").rsplit("/", 1)[-1] if not is_local(d) else Path(d).name for d in class_dirs]
    if classnames is not None:
        class_ids = match_folder_classes(folder_names, classnames, root)
        names = list(classnames)
    else:
        class_ids, names = list(range(len(class_dirs))), [n.replace("_", " ") for n in folder_names]
    paths, labels = [], []
    for label, class_dir in zip(class_ids, class_dirs):
        files = list_images(class_dir)
        if not files:
            raise ValueError(f"class folder {class_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    return ClassificationData("", FileImages(paths), labels, names)


def _index_dir(path: Path | str) -> Path | str:
    return path.parent if isinstance(path, Path) else parent_of(path)


def _rows(path: Path | str) -> tuple[list[dict], list[str]]:
    rows, columns = read_index(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows, columns


def _classification_from_rows(path: Path, classnames, image_key, label_key) -> ClassificationData:
    rows, columns = _rows(path)
    img_col = pick_column(columns, image_key, IMAGE_COLUMNS, "image", path)
    label_col = pick_column(columns, label_key, LABEL_COLUMNS, "label", path)
    missing = [i for i, r in enumerate(rows) if r.get(label_col) in (None, "")]
    if missing:
        raise ValueError(f"{path}: row {missing[0] + 1} has an empty {label_col!r} value")
    labels, names = labels_to_ids([r[label_col] for r in rows], classnames, path)
    paths = [str(resolve_listed_path(str(r[img_col]), _index_dir(path))) for r in rows]
    return ClassificationData("", FileImages(paths), labels, names)


def _as_caption_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _retrieval_from_rows(path: Path, image_key, caption_key) -> RetrievalData:
    rows, columns = _rows(path)
    img_col = pick_column(columns, image_key, IMAGE_COLUMNS, "image", path)
    cap_col = pick_column(columns, caption_key, CAPTION_COLUMNS, "caption", path)
    grouped: dict[str, list[str]] = {}
    for r in rows:
        image = str(resolve_listed_path(str(r[img_col]), _index_dir(path)))
        grouped.setdefault(image, []).extend(_as_caption_list(r.get(cap_col)))
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
    paths = [str(resolve_listed_path(img["file_name"], image_dir)) for img in images]
    return RetrievalData("", FileImages(paths), [captions[img["id"]] for img in images])


def _wds_samples(path):
    """Yield ``(shard::key, {extension: TarMember})`` for every sample of every shard of ``path``."""
    for shard, index in index_shards(shard_paths(path)):
        for key, members in index.items():
            yield f"{shard}::{key}", members


def _classification_from_wds(path, classnames) -> ClassificationData:
    images, raw_labels, skipped = [], [], []
    for key, members in _wds_samples(path):
        img, cls = image_member(members), members.get("cls")
        if img is None:  # e.g. a failed download in the shard writer: counted as skipped
            skipped.append(key)
            continue
        if cls is None:
            raise ValueError(f"webdataset sample {key} has no 'cls' key (keys: {sorted(members)})")
        images.append(img)
        raw_labels.append(cls.read().decode("utf-8").strip())
    labels, names = labels_to_ids(raw_labels, classnames, path) if raw_labels else ([], classnames or [])
    return ClassificationData("", TarImages(images), labels, names, skipped)


def _retrieval_from_wds(path) -> RetrievalData:
    images, captions, skipped = [], [], []
    for key, members in _wds_samples(path):
        img, txt = image_member(members), members.get("txt")
        if img is None:
            skipped.append(key)
            continue
        if txt is None:
            raise ValueError(f"webdataset sample {key} has no 'txt' key (keys: {sorted(members)})")
        caps = [line.strip() for line in txt.read().decode("utf-8").splitlines() if line.strip()]
        if not caps:
            raise ValueError(f"webdataset sample {key} has an empty 'txt' caption")
        images.append(img)
        captions.append(caps)
    return RetrievalData("", TarImages(images), captions, skipped)


def _load_idx_dataset(path: Path, classnames, split) -> ClassificationData:
    images_path, labels_path = find_idx_pair(path, split)
    pixels, labels = read_idx(images_path), read_idx(labels_path)
    if pixels.ndim != 3 or labels.ndim != 1 or len(pixels) != len(labels):
        raise ValueError(f"IDX pair {images_path.name}/{labels_path.name} has shapes {pixels.shape} and {labels.shape}")
    ids, names = labels_to_ids(labels.tolist(), classnames, labels_path)
    return ClassificationData("", ArrayImages(pixels.astype(np.uint8), str(images_path)), ids, names)


__all__ = [
    "DATASET_TYPES", "ClassificationData", "RetrievalData", "align_classes", "dataset_name_from_path",
    "detect_format", "labels_to_ids", "load_classification_dataset", "load_retrieval_dataset",
    "match_folder_classes", "normalise_classname",
]
