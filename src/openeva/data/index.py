"""Index files that list images: CSV / TSV / JSONL rows with an image-path column and a caption or label column.

One reader for training (caption indexes), evaluation (labelled and captioned rows) and embedding. Column names
are given or detected from the usual candidates (open_clip's ``filepath`` / ``title``, ``image``, ``label``,
``caption`` ...). Relative image paths resolve against the index file's folder first, then the working
directory (open_clip's convention), see :func:`resolve_listed_path`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CAPTION_COLUMNS", "IMAGE_COLUMNS", "INDEX_SUFFIXES", "LABEL_COLUMNS", "pick_column", "read_index",
    "resolve_listed_path",
]

IMAGE_COLUMNS = ("filepath", "image", "image_path", "img", "path", "file", "filename", "file_name")
LABEL_COLUMNS = ("label", "class", "target", "cls", "class_id")
CAPTION_COLUMNS = ("caption", "captions", "text", "title", "txt", "sentence", "sentences")
# suffix -> CSV delimiter (None: JSON lines)
INDEX_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".ndjson": None}


def read_index(path: str | Path, sep: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CSV/TSV/JSONL index and its column names (the union of keys for JSONL).

    ``sep`` overrides the delimiter of a CSV/TSV (e.g. a tab-separated file named ``.csv``). Raises
    FileNotFoundError / ValueError (bad extension, invalid JSON line, not an object) naming the file and line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INDEX_SUFFIXES:
        raise ValueError(f"unsupported index file {path}: extension must be one of {sorted(INDEX_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path}")
    if INDEX_SUFFIXES[suffix] is None:
        if sep is not None:
            raise ValueError(f"sep={sep!r} does not apply to JSONL index {path}")
        rows, columns = [], {}
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: invalid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                columns.update(dict.fromkeys(row))
        return rows, list(columns)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=sep if sep is not None else INDEX_SUFFIXES[suffix])
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


def pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], role: str,
                path: str | Path) -> str:
    """``explicit`` if it is a column, else the first of ``candidates`` that is; ValueError listing the columns."""
    columns = list(columns)
    if explicit is not None:
        if explicit not in columns:
            hint = " (only one column was found: is the delimiter right?)" if len(columns) == 1 else ""
            raise ValueError(f"{path}: {role} column {explicit!r} not found; columns are {columns}{hint}")
        return explicit
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ValueError(f"{path}: no {role} column found (looked for {list(candidates)}); columns are {columns}")


def resolve_listed_path(value: str, index_dir: str | Path) -> Path:
    """An image path as written in an index: absolute as is; relative against the index's folder when the file
    is there, else against the working directory when it is there (open_clip writes paths relative to where
    the CSV was made); if neither exists, the index-relative path (reported as missing by the reader)."""
    listed = Path(value)
    if listed.is_absolute():
        return listed
    beside = Path(index_dir) / listed
    if beside.exists():
        return beside
    from_cwd = Path.cwd() / listed
    return from_cwd if from_cwd.exists() else beside
