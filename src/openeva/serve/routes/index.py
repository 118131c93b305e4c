"""Index writes and thumbnails.

``POST /v1/index/add`` (multipart ``files``) adds images as a new segment; ``DELETE /v1/index/items?id=..``
deletes rows by id; both need the ``X-API-Key`` header and are serialised, across worker processes too, by the
index's lock file; each is visible to every worker's next request once it returned. ``GET /v1/thumb/{row}``:
a JPEG thumbnail of index row ``row`` (only files the index lists)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
from pathlib import Path

import numpy as np
from fastapi import APIRouter, File, Query, Security, UploadFile
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from openeva.data.collection import DECODE_ERRORS, image_size_of
from openeva.index import Index
from openeva.serve.errors import ApiError
from openeva.serve.openapi import FormInt, errors
from openeva.serve.routes.embed import FILES_SCHEMA
from openeva.serve.search import thumbnail
from openeva.serve.state import ServiceState, StateDep

router = APIRouter()
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key the service was started with "
                       "(--api-key or OPENEVA_API_KEY); index writes need it")
MAX_DELETE_IDS = 1000  # ids per DELETE request


class Added(BaseModel):
    added: int
    index_size: int


class Deleted(BaseModel):
    deleted: int
    index_size: int


def check_key(state: ServiceState, key: str | None) -> None:
    """Writes need the service's API key: 403 when it has none (writes off), 401 for a missing or wrong one."""
    if state.api_key is None:
        raise ApiError(403, "writes_disabled", "index writes are off: start the service with --api-key "
                       "(or OPENEVA_API_KEY)")
    if key is None or not secrets.compare_digest(key.encode(), state.api_key.encode()):
        raise ApiError(401, "bad_api_key", "a valid X-API-Key header is required for index writes")


@router.post("/v1/index/add", response_model=Added, responses=errors(400, 401, 403, 409, 413, 415, 422, 503))
async def index_add(state: StateDep, files: list[UploadFile] = File(..., json_schema_extra=FILES_SCHEMA),
                    x_api_key: str | None = Security(API_KEY)):
    check_key(state, x_api_key)
    if state.index_path is None:
        raise ApiError(409, "no_index", "this service has no --index folder to write to")
    blobs = await state.read_uploads(files)
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D), also validates every image
    async with state.index_lock:
        added = await asyncio.to_thread(add_rows, state, blobs, vectors)
    return {"added": added, "index_size": len(state.index)}


@router.delete("/v1/index/items", response_model=Deleted, responses=errors(401, 403, 409, 422, 503))
async def index_delete(state: StateDep, x_api_key: str | None = Security(API_KEY),
                       ids: list[str] = Query(..., alias="id", min_length=1, max_length=MAX_DELETE_IDS,
                                              description="ids of the rows to delete (repeat: ?id=a&id=b)")):
    """Delete rows by id: gone from every worker's next search; ids not in the index are not counted."""
    check_key(state, x_api_key)
    index = state.need_index()
    async with state.index_lock:
        deleted = await asyncio.to_thread(index.delete, list(ids))
    state.metrics.index_size.set(len(index))
    return {"deleted": int(deleted), "index_size": len(index)}


def add_rows(state: ServiceState, blobs: list[tuple[str, bytes]], vectors: np.ndarray) -> int:
    """Store the files under ``<index>/uploads/`` (named by content, so the same bytes are one row) and add their
    (N, D) vectors to the index as a new segment (a new flat index if the folder has none yet); the number of
    new rows. The index's lock file serialises this with every other writer, in this process or another."""
    uploads = state.index_path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    meta = []
    for name, data in blobs:
        digest = hashlib.sha256(data).hexdigest()[:24]
        path = uploads / f"{digest}.img"
        if not path.exists():
            tmp = uploads / f".{digest}.{os.getpid()}.tmp"  # per process: two workers may store the same bytes
            tmp.write_bytes(data)
            tmp.replace(path)
        image_w, image_h = image_size_of(data)
        meta.append({"id": f"upload/{digest}", "path": str(path), "caption": Path(name).stem,
                     "width": image_w, "height": image_h, "source": {"path": str(path)}})
    index = state.current_index()
    if index is None:
        # the folder's first rows (its uploads/ folder is part of an index folder, so the build accepts it)
        first = {row["id"]: j for j, row in enumerate(meta)}  # the same bytes twice in one request: one row
        keep = sorted(first.values())
        state.index = Index.from_vectors(vectors[keep], [meta[j] for j in keep], state.index_path,
                                         model_info=state.encoder.info, kind="flat")
        added = len(keep)
    else:
        added = index.add(vectors, meta, state.encoder.info)
    state.metrics.index_size.set(len(state.index))
    return added


@router.get("/v1/thumb/{row}", response_class=Response,
            responses={200: {"description": "a JPEG thumbnail", "content": {"image/jpeg": {"schema": {
                "type": "string", "format": "binary"}}}}, **errors(404, 409, 422, 503)})
async def thumb(row: FormInt, state: StateDep,
                size: FormInt = Query(256, ge=16, le=1024, description="longest side")):
    index = state.need_index()
    if row < 0 or not index.has_row(row):  # never a row deleted, nor a file the index does not list
        raise ApiError(404, "no_such_row", f"row {row} is not in the index", "row")

    def render() -> bytes:
        buf = io.BytesIO()
        thumbnail(index, row, size).save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    try:
        data = await asyncio.to_thread(render)
    except (FileNotFoundError, *DECODE_ERRORS):
        raise ApiError(404, "unreadable", f"the image of row {row} can no longer be read") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
