"""``POST /v1/index/add`` (multipart ``files``, header ``X-API-Key``): add images to the index, saved atomically;
``GET /v1/thumb/{row}``: a JPEG thumbnail of index row ``row`` (only files the index lists)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from pathlib import Path

import numpy as np
from fastapi import APIRouter, File, Header, UploadFile
from fastapi.responses import Response

from openeva.data.collection import DECODE_ERRORS, image_size_of
from openeva.serve.errors import ApiError
from openeva.serve.index import Index
from openeva.serve.search import thumbnail
from openeva.serve.state import ServiceState, StateDep

router = APIRouter()


@router.post("/v1/index/add")
async def index_add(state: StateDep, files: list[UploadFile] = File(...), x_api_key: str | None = Header(None)):
    if state.api_key is None:
        raise ApiError(403, "writes_disabled", "index writes are off: start the service with --api-key "
                       "(or OPENEVA_API_KEY)")
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), state.api_key.encode()):
        raise ApiError(401, "bad_api_key", "a valid X-API-Key header is required for index writes")
    if state.index_path is None:
        raise ApiError(409, "no_index", "this service has no --index folder to write to")
    blobs = await state.read_uploads(files)
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D), also validates every image
    async with state.index_lock:
        added = await asyncio.to_thread(add_and_save, state, blobs, vectors)
    return {"added": added, "index_size": len(state.index)}


def add_and_save(state: ServiceState, blobs: list[tuple[str, bytes]], vectors: np.ndarray) -> int:
    """Store the files under ``<index>/uploads/`` (named by content, so the same bytes are one row), add their
    (N, D) vectors to the index (a new flat one if there is none yet) and save it; the number of new rows."""
    uploads = state.index_path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    meta = []
    for name, data in blobs:
        digest = hashlib.sha256(data).hexdigest()[:24]
        path = uploads / f"{digest}.img"
        if not path.exists():
            tmp = uploads / f".{digest}.tmp"
            tmp.write_bytes(data)
            tmp.replace(path)
        image_w, image_h = image_size_of(data)
        meta.append({"id": f"upload/{digest}", "path": str(path), "caption": Path(name).stem,
                     "width": image_w, "height": image_h, "source": {"path": str(path)}})
    if state.index is None:
        state.index = Index.build(vectors, meta, state.encoder.info, kind="flat")
        added = len(meta)
    else:
        added = state.index.add(vectors, meta, state.encoder.info)
    state.dirty = True
    if added:
        state.index.save(state.index_path)
    state.dirty = False
    state.metrics.index_size.set(len(state.index))
    return added


@router.get("/v1/thumb/{row}", responses={200: {"content": {"image/jpeg": {}}}})
async def thumb(row: int, state: StateDep, size: int = 256):
    index = state.need_index()
    if not 0 <= row < len(index):
        raise ApiError(404, "no_such_row", f"row {row} is not in the index (0..{len(index) - 1})")
    if not 16 <= size <= 1024:
        raise ApiError(422, "bad_size", "size must be in [16, 1024]")

    def render() -> bytes:
        buf = io.BytesIO()
        thumbnail(index, row, size).save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    try:
        data = await asyncio.to_thread(render)
    except (FileNotFoundError, *DECODE_ERRORS):
        raise ApiError(404, "unreadable", f"the image of row {row} can no longer be read") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
