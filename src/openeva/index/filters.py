"""Metadata filters for a search: path prefix or glob, equality on any column, width/height ranges.

A :class:`SearchFilter` turns into a boolean mask over a segment's rows (pyarrow.compute over the memory-mapped
columns, cached per segment); the search then asks FAISS for hits among the allowed rows only (an
``IDSelectorBitmap``), or, when few rows are allowed, scores exactly those rows (see :mod:`openeva.index.ann`).
Filtering inside the search, rather than over-fetching and dropping, keeps ``k`` hits whenever ``k`` rows match,
however selective the filter.

The text form (CLI ``--filter``, HTTP): expressions ``KEY=VALUE``, ``KEY>=N``, ``KEY<=N``, ``KEY>N``, ``KEY<N``.
``path=photos/2024/*`` is a glob (``*``, ``?``, ``[...]``), ``path=photos/2024/`` a prefix; ``width`` and ``height``
take ranges; any other key is an equality on that column (as ``where``). Stored paths are usually absolute, so a
relative path (not starting with ``/``) also matches from any folder boundary: ``photos/2024/`` keeps
``/home/me/photos/2024/a.jpg``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(>=|<=|!=|=|>|<)\s*(.*?)\s*$")
_RANGE_KEYS = ("width", "height")


def _range(value, name: str) -> tuple[int | None, int | None]:
    if value is None:
        return (None, None)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair (None for open), got {value!r}")
    lo, hi = (None if v is None else int(v) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name} range is empty: min {lo} > max {hi}")
    return lo, hi


@dataclass(frozen=True)
class SearchFilter:
    """Which rows a search may return. All given conditions must hold (AND); an empty filter allows every row.

    ``where`` maps a column to a value (or a list of accepted values); values compare as strings."""

    path_prefix: str | None = None
    path_glob: str | None = None
    where: dict = field(default_factory=dict)
    width: tuple = (None, None)
    height: tuple = (None, None)

    def __post_init__(self):
        object.__setattr__(self, "width", _range(self.width, "width"))
        object.__setattr__(self, "height", _range(self.height, "height"))
        where = {}
        for key, value in dict(self.where or {}).items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"where: column names must be non-empty strings, got {key!r}")
            values = value if isinstance(value, (list, tuple)) else [value]
            if not values:
                raise ValueError(f"where {key}: give at least one value")
            where[key] = tuple(str(v) for v in values)
        object.__setattr__(self, "where", where)
        for name in ("path_prefix", "path_glob"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")

    def __hash__(self):  # where is a dict: hash its items (filters are cache keys)
        return hash((self.path_prefix, self.path_glob, tuple(sorted(self.where.items())), self.width, self.height))

    @property
    def empty(self) -> bool:
        return (self.path_prefix is None and self.path_glob is None and not self.where
                and self.width == (None, None) and self.height == (None, None))

    # ------------------------------------------------------------------------------------------ text form
    @classmethod
    def parse(cls, filters=None, where=None, *, min_width=None, max_width=None, min_height=None,
              max_height=None) -> SearchFilter:
        """Build a filter from text: ``filters`` (a string or list of ``KEY=VALUE`` / ``KEY>=N`` ... expressions),
        ``where`` (``COL=VALUE`` strings, or a dict), and width/height bounds. Bad syntax is a ValueError that
        quotes the expression."""
        exprs = [filters] if isinstance(filters, str) else list(filters or [])
        if isinstance(where, dict):
            where_items = list(where.items())
        else:
            where_items = []
            for text in ([where] if isinstance(where, str) else list(where or [])):
                if not isinstance(text, str) or "=" not in text:
                    raise ValueError(f"bad --where {text!r}: write COLUMN=VALUE")
                key, op, value = _split(text)
                if op != "=":
                    raise ValueError(f"bad --where {text!r}: write COLUMN=VALUE")
                where_items.append((key, value))
        prefix = glob = None
        bounds = {"width": [min_width, max_width], "height": [min_height, max_height]}
        merged: dict[str, list[str]] = {}
        for text in exprs:
            key, op, value = _split(text)
            if key == "path":
                if op != "=":
                    raise ValueError(f"bad filter {text!r}: path takes '=' (a prefix, or a glob with * ? [])")
                if any(c in value for c in "*?["):
                    glob = value
                else:
                    prefix = value
            elif key in _RANGE_KEYS:
                try:
                    n = int(value)
                except ValueError:
                    raise ValueError(f"bad filter {text!r}: {key} needs an integer") from None
                if op == "=":
                    bounds[key] = [n, n]
                elif op in (">=", ">"):
                    bounds[key][0] = n + (op == ">")
                elif op in ("<=", "<"):
                    bounds[key][1] = n - (op == "<")
                else:
                    raise ValueError(f"bad filter {text!r}: {key} takes = >= <= > <")
            else:
                if op != "=":
                    raise ValueError(f"bad filter {text!r}: column {key!r} takes '=' (equality)")
                where_items.append((key, value))
        for key, value in where_items:
            merged.setdefault(key, []).extend(value if isinstance(value, (list, tuple)) else [value])
        return cls(path_prefix=prefix, path_glob=glob, where=merged, width=tuple(bounds["width"]),
                   height=tuple(bounds["height"]))

    # ------------------------------------------------------------------------------------------ evaluation
    def mask(self, table: pa.Table) -> np.ndarray:
        """(n,) bool: the rows of a segment's metadata ``table`` this filter allows."""
        n = table.num_rows
        keep = pa.array(np.ones(n, dtype=bool))
        if self.path_prefix is not None:
            hit = pc.starts_with(table["path"], self.path_prefix)
            if not self.path_prefix.startswith("/"):  # relative: also at any folder boundary of an absolute path
                hit = pc.or_(hit, pc.match_substring(table["path"], "/" + self.path_prefix))
            keep = pc.and_(keep, pc.fill_null(hit, False))
        if self.path_glob is not None:
            regex = glob_regex(self.path_glob)
            if not self.path_glob.startswith(("/", "*")):  # relative: the path's tail from a folder boundary
                regex = "^(?:.*/)?" + regex[1:]
            keep = pc.and_(keep, pc.fill_null(pc.match_substring_regex(table["path"], regex), False))
        for name, (lo, hi) in (("width", self.width), ("height", self.height)):
            if lo is not None:
                keep = pc.and_(keep, pc.fill_null(pc.greater_equal(table[name], lo), False))
            if hi is not None:
                keep = pc.and_(keep, pc.fill_null(pc.less_equal(table[name], hi), False))
        for name, values in self.where.items():
            if name not in table.column_names:  # a column this segment's rows never had: nothing matches
                return np.zeros(n, dtype=bool)
            column = pc.cast(table[name], pa.string())
            keep = pc.and_(keep, pc.fill_null(pc.is_in(column, value_set=pa.array(list(values))), False))
        out = np.asarray(keep.combine_chunks() if isinstance(keep, pa.ChunkedArray) else keep, dtype=bool)
        return out


def glob_regex(pattern: str) -> str:
    """An anchored RE2 regex for a glob (``*`` any run, crossing "/"; ``?`` one character; ``[abc]`` / ``[!abc]``
    a set). Not :func:`fnmatch.translate`: its atomic groups are not RE2 syntax (pyarrow's engine)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in pattern[i + 2:] + pattern[i + 1:i + 2]:
            j = pattern.index("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            body = pattern[i + 1:j]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"


def _split(text: str) -> tuple[str, str, str]:
    if not isinstance(text, str):
        raise ValueError(f"a filter must be a string like 'path=photos/*', got {text!r}")  # noqa: TRY004 (bad input)
    m = _EXPR.match(text)
    if not m or (m.group(2) != "=" and not m.group(3)):
        raise ValueError(f"bad filter {text!r}: write KEY=VALUE, or width/height with >= <= > < (e.g. "
                         "'path=photos/2024/*', 'width>=640', 'camera=X100')")
    if m.group(2) == "!=":
        raise ValueError(f"bad filter {text!r}: '!=' is not supported; filters keep rows that match")
    return m.group(1), m.group(2), m.group(3)
