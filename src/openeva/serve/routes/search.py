"""``POST /v1/search`` (``{"text", "k"}``) and ``POST /v1/search/image`` (multipart ``file`` + ``k``): ranked hits."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from openeva.serve.state import StateDep

router = APIRouter()


class SearchIn(BaseModel):
    text: str = Field(description="the text query")
    k: int = Field(10, description="number of results")


@router.post("/v1/search")
async def search_text(body: SearchIn, state: StateDep):
    index = state.need_index()
    k = state.check_k(body.k)
    vectors = await state.bounded(state.text_vectors([body.text]))  # (1, D)
    hits = await state.bounded(asyncio.to_thread(index.search, vectors, k))  # off the loop; waits while an add writes
    return {"query": {"text": body.text}, "results": public_hits(hits[0])}


@router.post("/v1/search/image")
async def search_image(state: StateDep, file: UploadFile = File(...), k: int = Form(10)):
    index = state.need_index()
    k = state.check_k(k)
    blobs = await state.read_uploads([file])
    vectors = await state.bounded(state.image_vectors(blobs))  # (1, D)
    hits = await state.bounded(asyncio.to_thread(index.search, vectors, k))
    return {"query": {"image": blobs[0][0]}, "results": public_hits(hits[0])}


def public_hits(hits: list[dict]) -> list[dict]:
    """The fields of each hit a client may see (not the server's file paths), and the URL of its thumbnail."""
    return [{k: h[k] for k in ("rank", "score", "row", "id", "caption", "width", "height")}
            | {"thumb": f"/v1/thumb/{h['row']}"} for h in hits]
