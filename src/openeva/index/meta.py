"""Row metadata of an index segment as one Arrow IPC file, read through a memory map.

Arrow IPC (not Parquet) because an IPC file maps without decoding: opening a segment of ten million rows costs
a few page faults, and a filter runs :mod:`pyarrow.compute` kernels over the mapped columns. Columns:

    id, path, caption (string), width, height (int64), source (JSON string), and one string column per extra
    key the rows brought (a CSV/JSONL source's other columns; non-string values stored as JSON text)

``where`` filters compare these extra columns as strings (``year=2024`` matches the JSON text ``2024``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

STANDARD = ("id", "path", "caption", "width", "height", "source")
_TYPES = {"id": pa.string(), "path": pa.string(), "caption": pa.string(), "width": pa.int64(),
          "height": pa.int64(), "source": pa.string()}


def schema_for(extras: list[str]) -> pa.Schema:
    """The Arrow schema of a segment whose rows carry the extra keys ``extras`` (sorted, standard ones dropped)."""
    return pa.schema([(name, _TYPES[name]) for name in STANDARD] + [(name, pa.string()) for name in extras])


def extra_keys(rows) -> set[str]:
    return {k for row in rows for k in row if k not in _TYPES}


def _text(value):
    return value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True)


def rows_to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of ``rows`` (dicts as ``openeva embed`` writes them) under ``schema``."""
    cols = {}
    for name in schema.names:
        values = [row.get(name) for row in rows]
        if name == "source":
            values = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
        elif name in ("width", "height"):
            values = [None if v is None else int(v) for v in values]
        elif name not in ("id", "path", "caption"):
            values = [_text(v) for v in values]
        cols[name] = pa.array(values, type=schema.field(name).type)
    if any(row.get("id") is None for row in rows):
        raise ValueError("every metadata row needs an 'id'")
    return pa.RecordBatch.from_pydict(cols, schema=schema)


class MetaWriter:
    """Stream record batches into ``path`` (an Arrow IPC file); ``close()`` finishes it."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.schema = schema
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write(self, rows: list[dict]) -> None:
        if rows:
            self._writer.write_batch(rows_to_batch(rows, self.schema))

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def read_meta(path: Path) -> pa.Table:
    """The metadata table of a segment, memory-mapped (zero-copy)."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def table_rows(table: pa.Table, rows) -> list[dict]:
    """Rows ``rows`` (local indices) of ``table`` as dicts, ``source`` decoded, null extras left out."""
    out = []
    for row in table.take(pa.array(rows, type=pa.int64())).to_pylist():
        if row.get("source") is not None:
            row["source"] = json.loads(row["source"])
        out.append({k: v for k, v in row.items() if k in _TYPES or v is not None})
    return out
