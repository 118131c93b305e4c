"""Index files that list images: CSV / TSV / JSONL rows with an image-path column and a caption or label column.

One reader for training (caption indexes), evaluation (labelled and captioned rows) and embedding. Column names
are given or detected from the usual candidates (open_clip's ``filepath`` / ``title``, ``image``, ``label``,
``caption`` ...). Relative image paths resolve against the index file's folder first, then the working
directory (open_clip's convention), see :func:`resolve_listed_path`. An index may be a URL
(``s3://bucket/captions.csv``, ``https://host/data/index.jsonl``): it is read whole, and its relative image paths
resolve against the index's URL (``s3://bucket/images/0001.jpg`` for ``images/0001.jpg``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openeva.data.sources import is_local, join_source, read_text, source_exists

__all__ = [
    "CAPTION_COLUMNS", "IMAGE_COLUMNS", "INDEX_SUFFIXES", "LABEL_COLUMNS", "index_suffix", "pick_column",
    "read_index", "resolve_listed_path",
]

IMAGE_COLUMNS = ("filepath", "image", "image_path", "img", "path", "file", "filename", "file_name")
LABEL_COLUMNS = ("label", "class", "target", "cls", "class_id")
CAPTION_COLUMNS = ("caption", "captions", "text", "title", "txt", "sentence", "sentences")
# suffix -> CSV delimiter (None: JSON lines)
INDEX_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".ndjson": None}


def index_suffix(path: str | Path) -> str:
    """The extension of an index path or URL, in lower case (``.csv``)."""
    name = str(path).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(name).suffix.lower()


def read_index(path: str | Path, sep: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CSV/TSV/JSONL index (a path or a URL) and its column names (the union of keys for JSONL).

    ``sep`` overrides the delimiter of a CSV/TSV (e.g. a tab-separated file named ``.csv``). Raises
    FileNotFoundError / ValueError (bad extension, invalid JSON line, not an object) naming the file and line.
    """
    local = is_local(str(path))
    path = Path(path) if local else str(path)  # type: ignore[assignment]
    suffix = index_suffix(path)
    if suffix not in INDEX_SUFFIXES:
        raise ValueError(f"unsupported index file {path}: extension must be one of {sorted(INDEX_SUFFIXES)}")
    if not (path.is_file() if local else source_exists(path)):  # type: ignore[union-attr]
        raise FileNotFoundError(f"index file not found: {path}")
    text = path.read_bytes().decode("utf-8") if local else read_text(path)  # type: ignore[union-attr]
    if INDEX_SUFFIXES[suffix] is None:
        if sep is not None:
            raise ValueError(f"sep={sep!r} does not apply to JSONL index {path}")
        rows, columns = [], {}
        with io.StringIO(text) as f:
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
    with io.StringIO(text, newline="") as f:
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


def resolve_listed_path(value: str, index_dir: str | Path) -> Path | str:
    """An image path as written in an index: absolute (or a URL) as is; relative against the index's folder when
    the file is there, else against the working directory when it is there (open_clip writes paths relative to
    where the CSV was made); if neither exists, the index-relative path (reported as missing by the reader).

    For an index read from a URL (``index_dir`` a URL) a relative path is joined to that URL, unchecked (a
    request per row would cost minutes on a large index; a missing image is skipped when it is read)."""
    if not is_local(value) or not is_local(str(index_dir)):
        return join_source(index_dir, value)
    listed = Path(value)
    if listed.is_absolute():
        return listed
    beside = Path(index_dir) / listed
    if beside.exists():
        return beside
    from_cwd = Path.cwd() / listed
    return from_cwd if from_cwd.exists() else beside
