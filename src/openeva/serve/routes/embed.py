"""``POST /v1/embed/texts``, ``/v1/embed/images`` (multipart) and ``/v1/embed/images/base64``: unit vectors."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, File, UploadFile
from pydantic import BaseModel, Field

from openeva.serve.errors import ApiError
from openeva.serve.limits import check_image_count
from openeva.serve.state import StateDep

router = APIRouter()


class TextsIn(BaseModel):
    texts: list[str] = Field(description="texts to embed")


class ImagesIn(BaseModel):
    images: list[str] = Field(description="base64-encoded image files")


@router.post("/v1/embed/texts")
async def embed_texts(body: TextsIn, state: StateDep):
    vectors = await state.bounded(state.text_vectors(body.texts))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}


@router.post("/v1/embed/images")
async def embed_images(state: StateDep, files: list[UploadFile] = File(...)):
    blobs = await state.read_uploads(files)
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}


@router.post("/v1/embed/images/base64")
async def embed_images_base64(body: ImagesIn, state: StateDep):
    check_image_count(len(body.images), state.limits)
    blobs = []
    for i, text in enumerate(body.images):
        try:
            blobs.append((f"image {i}", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"image {i} is not valid base64") from None
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}
