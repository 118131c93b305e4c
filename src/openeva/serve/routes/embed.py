"""``POST /v1/embed/texts``, ``/v1/embed/images`` (multipart) and ``/v1/embed/images/base64``: unit vectors."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, File, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from openeva.serve.errors import ApiError
from openeva.serve.limits import check_image_count
from openeva.serve.openapi import EXAMPLE_PNG_B64, NON_BLANK_PATTERN, errors, limit
from openeva.serve.state import StateDep

router = APIRouter()

BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# the schema of a list of texts: each not blank and within the characters limit, as many as the texts limit
TEXTS_SCHEMA = {"minItems": 1, **limit(maxItems="max_texts"),
                "items": {"type": "string", "pattern": NON_BLANK_PATTERN, **limit(maxLength="max_text_chars")}}
FILES_SCHEMA = {"minItems": 1, **limit(maxItems="max_images")}  # multipart image files


class TextsIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["a red circle", "a blue star"]}]})
    texts: list[str] = Field(description="texts to embed", json_schema_extra=TEXTS_SCHEMA)


class ImagesIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"images": [EXAMPLE_PNG_B64]}]})
    images: list[str] = Field(description="base64-encoded image files", json_schema_extra={
        "minItems": 1, **limit(maxItems="max_images"), "items": {"type": "string", "pattern": BASE64_PATTERN}})


class Vectors(BaseModel):
    dim: int
    vectors: list[list[float]]


IMAGE_ERRORS = errors(400, 413, 415, 422, 503)


@router.post("/v1/embed/texts", response_model=Vectors, responses=errors(413, 422, 503))
async def embed_texts(body: TextsIn, state: StateDep):
    vectors = await state.bounded(state.text_vectors(body.texts))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}


@router.post("/v1/embed/images", response_model=Vectors, responses=IMAGE_ERRORS)
async def embed_images(state: StateDep, files: list[UploadFile] = File(..., json_schema_extra=FILES_SCHEMA)):
    blobs = await state.read_uploads(files)
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}


@router.post("/v1/embed/images/base64", response_model=Vectors, responses=IMAGE_ERRORS)
async def embed_images_base64(body: ImagesIn, state: StateDep):
    check_image_count(len(body.images), state.limits)
    blobs = []
    for i, text in enumerate(body.images):
        try:
            blobs.append((f"image {i}", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"image {i} is not valid base64", "images") from None
    vectors = await state.bounded(state.image_vectors(blobs))  # (N, D)
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}
