"""``POST /v1/search`` (JSON ``text``, ``k``, ``threshold``, ``filter``) and ``POST /v1/search/image`` (multipart
``file``, ``k``, ``threshold`` and the filter as form fields): ranked hits.

A filter keeps rows by path (prefix or glob), size (``width`` / ``height`` ranges) and any metadata column
(``where``: a CSV/JSONL source's columns); it is applied inside the index's search
(:class:`openeva.index.SearchFilter`), so ``k`` hits come back whenever ``k`` rows match. ``threshold`` drops
hits scoring below it. Every bound here is in the schema, and the server refuses exactly what the schema does.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from openeva.index import SearchFilter
from openeva.index.dedup import search_folded
from openeva.serve.errors import ApiError
from openeva.serve.openapi import NON_BLANK_PATTERN, FormInt, JsonInt, errors, limit
from openeva.serve.state import StateDep

router = APIRouter()
K_SCHEMA = {"minimum": 1, **limit(maximum="max_k")}
MAX_SIDE = 1_000_000  # pixels: bounds of a width / height range
# JSON fields are strict (no "5" or true for 5: the schema says integer); form fields arrive as text
Side = Annotated[JsonInt, Field(ge=0, le=MAX_SIDE)]
FormSide = Annotated[FormInt, Field(ge=0, le=MAX_SIDE)]
Range = tuple[Side | None, Side | None]
WhereValue = Annotated[str, Field(max_length=1000)] | int | bool  # the union keeps "5" text and true a bool
THRESHOLD_HELP = "drop hits scoring below this cosine similarity"
FOLD_HELP = "fold near-duplicates: a hit at this cosine similarity or more to a better hit is listed under it"
Threshold = Annotated[float, Field(ge=-1.0, le=1.0, strict=True, description=THRESHOLD_HELP)]
WHERE_ITEM_PATTERN = "^[^=]+="  # COLUMN=VALUE (the first '=' splits)


class FilterIn(BaseModel):
    """Which rows a search may return; every condition given must hold. ``width`` / ``height`` are
    ``[min, max]`` with ``null`` for an open end (a range with min > max matches nothing)."""

    model_config = ConfigDict(extra="forbid")
    path_prefix: str | None = Field(None, min_length=1, max_length=4096, description="rows whose path starts so")
    path_glob: str | None = Field(None, min_length=1, max_length=4096, description="rows whose whole path matches "
                                  "this glob (* ? [...])")
    where: dict[Annotated[str, Field(min_length=1, max_length=200)],
                WhereValue | Annotated[list[WhereValue], Field(min_length=1, max_length=100)]] = Field(
        default_factory=dict, max_length=20, description="column -> value (or accepted values), compared as text")
    width: Range | None = None
    height: Range | None = None


class SearchIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "a red circle", "k": 5, "threshold": 0.1, "filter": {"width": [32, None]}}]})
    text: str = Field(description="the text query", json_schema_extra={"pattern": NON_BLANK_PATTERN,
                                                                      **limit(maxLength="max_text_chars")})
    k: JsonInt = Field(10, description="number of results", json_schema_extra=K_SCHEMA)
    threshold: Threshold | None = None
    filter: FilterIn | None = None
    fold_duplicates: Annotated[float, Field(ge=-1.0, le=1.0, strict=True, description=FOLD_HELP)] | None = None


class Hit(BaseModel):
    rank: int
    score: float
    row: int
    id: str
    caption: str | None = None
    width: int | None = None
    height: int | None = None
    thumb: str
    duplicate_count: int | None = Field(None, description="near-duplicates folded into this hit (fold_duplicates)")


class SearchOut(BaseModel):
    query: dict
    results: list[Hit]


@router.post("/v1/search", response_model=SearchOut, responses=errors(409, 413, 422, 503))
async def search_text(body: SearchIn, state: StateDep):
    index = state.need_index()
    k = state.check_k(body.k)
    flt = to_filter(body.filter)
    vectors = await state.bounded(state.text_vectors([body.text]))  # (1, D)
    hits = await run_search(state, index, vectors, k, body.threshold, flt, body.fold_duplicates)
    return {"query": {"text": body.text}, "results": public_hits(hits)}


@router.post("/v1/search/image", response_model=SearchOut, responses=errors(400, 409, 413, 415, 422, 503))
async def search_image(
        state: StateDep, file: UploadFile = File(...),
        k: FormInt = Form(10, description="number of results", json_schema_extra=K_SCHEMA),
        # optional form fields are typed without None (a form cannot send null), defaulting to None
        threshold: float = Form(None, ge=-1.0, le=1.0, description=THRESHOLD_HELP),
        fold_duplicates: float = Form(None, ge=-1.0, le=1.0, description=FOLD_HELP),
        path_prefix: str = Form(None, min_length=1, max_length=4096, description="rows whose path starts so"),
        path_glob: str = Form(None, min_length=1, max_length=4096, description="rows whose path matches this glob"),
        min_width: FormSide = Form(None), max_width: FormSide = Form(None),
        min_height: FormSide = Form(None), max_height: FormSide = Form(None),
        where: list[str] = Form(None, description="COLUMN=VALUE, repeated for several columns",
                                json_schema_extra={"items": {"type": "string", "pattern": WHERE_ITEM_PATTERN}})):
    index = state.need_index()
    k = state.check_k(k)
    columns: dict[str, list[str]] = {}
    for item in where or []:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ApiError(422, "bad_filter", f"where {item!r}: write COLUMN=VALUE", "where")
        columns.setdefault(key, []).append(value)
    flt = make_filter(path_prefix, path_glob, columns, (min_width, max_width), (min_height, max_height))
    blobs = await state.read_uploads([file])
    vectors = await state.bounded(state.image_vectors(blobs))  # (1, D)
    hits = await run_search(state, index, vectors, k, threshold, flt, fold_duplicates)
    return {"query": {"image": blobs[0][0]}, "results": public_hits(hits)}


def to_filter(body: FilterIn | None) -> SearchFilter | None:
    """The index's filter for a JSON request's; ``None`` when it cannot match anything (an empty range)."""
    if body is None:
        return SearchFilter()
    where = {key: [v if isinstance(v, str) else json.dumps(v) for v in (vals if isinstance(vals, list) else [vals])]
             for key, vals in body.where.items()}  # as the index stores non-text values: JSON text
    return make_filter(body.path_prefix, body.path_glob, where, body.width, body.height)


def make_filter(path_prefix, path_glob, where: dict, width, height) -> SearchFilter | None:
    """A :class:`SearchFilter`, or ``None`` for a range with min > max (it matches no row)."""
    ranges = {}
    for name, bounds in (("width", width), ("height", height)):
        lo, hi = bounds or (None, None)
        if lo is not None and hi is not None and lo > hi:
            return None
        ranges[name] = (lo, hi)
    try:
        return SearchFilter(path_prefix=path_prefix, path_glob=path_glob, where=where, **ranges)
    except ValueError as err:
        raise ApiError(422, "bad_filter", str(err), "filter") from None


async def run_search(state, index, vectors, k: int, threshold: float | None, flt: SearchFilter | None,
                     fold: float | None = None) -> list[dict]:
    """One query's hits, off the event loop (a search may wait while this process's add writes); with ``fold``,
    near-duplicates folded (:func:`openeva.index.dedup.search_folded`)."""
    if flt is None:
        return []
    kw = {"filter": None if flt.empty else flt, "threshold": threshold}
    if fold is None:
        hits = (await state.bounded(asyncio.to_thread(index.search, vectors, k, **kw)))[0]
    else:
        hits = await state.bounded(asyncio.to_thread(search_folded, index, vectors, k, fold, **kw))
    return [h for h in hits if not math.isnan(h["score"])]


def public_hits(hits: list[dict]) -> list[dict]:
    """The fields of each hit a client may see (not the server's file paths), and the URL of its thumbnail."""
    return [{k: h.get(k) for k in ("rank", "score", "row", "id", "caption", "width", "height", "duplicate_count")}
            | {"thumb": f"/v1/thumb/{h['row']}"} for h in hits]
