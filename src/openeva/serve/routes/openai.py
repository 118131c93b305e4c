"""``POST /v1/embeddings`` and ``GET /v1/models``: OpenAI's embeddings API, so its clients work unchanged.

Compatible with OpenAI's (and infinity's) request and response: ``input`` is a string or a list of strings;
a string ``data:image/<format>;base64,<data>`` is an image, any other string a text, and one request may mix
them (answers keep the order of ``input``). ``model`` must name the served model (``GET /v1/models``),
``encoding_format`` is ``"float"`` or ``"base64"`` (little-endian float32 bytes, what OpenAI's client asks for
by default and decodes), ``dimensions`` may only be the model's own (vectors are not truncated). Token arrays
are refused: send text. ``usage.prompt_tokens`` counts the tokens the model's tokenizer makes of the texts
(start and end tokens included, after truncation to its context) plus one per image. Errors come in OpenAI's
shape (every route's, see :mod:`openeva.serve.errors`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from openeva.serve.errors import ApiError
from openeva.serve.limits import check_image_count, check_texts
from openeva.serve.openapi import NON_BLANK_PATTERN, JsonInt, errors
from openeva.serve.state import StateDep

router = APIRouter()

DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")  # an input item that is an image (as the schema's)
# a base64 data URL of an image, as the schema states it (what the server decodes is exactly this)
IMAGE_URL_PATTERN = (r"^data:image/[A-Za-z0-9.+-]+;base64,"
                     r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
ITEM_SCHEMA = {"anyOf": [
    {"type": "string", "pattern": NON_BLANK_PATTERN, "x-openeva-limit": {"maxLength": "max_text_chars"},
     "description": "a text (not blank)"},
    {"type": "string", "pattern": IMAGE_URL_PATTERN, "description": "an image: data:image/png;base64,..."},
]}


def _input_schema(schema: dict) -> None:
    schema.clear()
    schema.update({"anyOf": [ITEM_SCHEMA, {"type": "array", "items": ITEM_SCHEMA, "minItems": 1,
                                           "x-openeva-limit": {"maxItems": "max_texts"}}],
                   "title": "Input",
                   "description": "a text, an image as a base64 data URL, or a list of them"})


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(json_schema_extra=_input_schema)
    model: str = Field(description="the served model's name (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes")
    dimensions: JsonInt | None = Field(None, description="only the model's own dimension (no truncation)")
    user: str | None = Field(None, description="accepted and ignored")

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value):
        if isinstance(value, list) and any(not isinstance(v, str) for v in value):
            raise ValueError("input must be a string or a list of strings (texts, or images as "
                             "data:image/...;base64 URLs); token arrays are not accepted: send the text")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="the unit vector, or its float32 bytes in base64")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


@router.get("/v1/models", response_model=ModelList, responses=errors(503))
async def list_models(state: StateDep):
    """The served model, by each name ``/v1/embeddings`` accepts for it."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "openeva"}
                                       for name in state.model_ids()]}


@router.post("/v1/embeddings", responses={200: {"model": EmbeddingsResponse}, **errors(400, 404, 413, 415, 422, 503)})
async def embeddings(body: EmbeddingsRequest, state: StateDep):
    encoder = state.need_model()
    if body.model not in state.model_ids():
        names = " or ".join(repr(name) for name in state.model_ids())
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; this service serves "
                       f"{names} (GET /v1/models)", "model")
    if body.dimensions is not None and body.dimensions != encoder.dim:
        raise ApiError(400, "unsupported_dimensions", f"dimensions={body.dimensions}: this model's vectors have "
                       f"{encoder.dim} dimensions and are not truncated; omit dimensions or pass {encoder.dim}",
                       "dimensions")
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    if not items:
        raise ApiError(422, "no_input", "input is an empty list: give at least one text or image", "input")
    texts = [(i, t) for i, t in enumerate(items) if not DATA_URL.match(t)]
    images = [(i, t) for i, t in enumerate(items) if DATA_URL.match(t)]
    vectors = np.zeros((len(items), encoder.dim), np.float32)  # (N, D), filled in input order
    try:
        if texts:
            check_texts([t for _, t in texts], state.limits)  # before any image is decoded
        if images:
            check_image_count(len(images), state.limits)
            images = [(i, _decode_data_url(t, i)) for i, t in images]
            got = await state.bounded(state.image_vectors([(f"input {i}", data) for i, data in images]))  # (I, D)
            vectors[[i for i, _ in images]] = got
        if texts:
            got = await state.bounded(state.text_vectors([t for _, t in texts]))  # (T, D)
            vectors[[i for i, _ in texts]] = got
    except ApiError as err:
        err.param = err.param or "input"
        raise
    tokens = count_tokens(encoder, [t for _, t in texts]) + len(images)
    if body.encoding_format == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        encoded = vectors.tolist()
    return {"object": "list", "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]}


def _decode_data_url(url: str, i: int) -> bytes:
    try:
        return base64.b64decode(url[url.index(",") + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"input {i} is a data URL whose data is not valid base64",
                       "input") from None


def count_tokens(encoder, texts: list[str]) -> int:
    """Tokens the model's tokenizer makes of ``texts`` (padding not counted); without a tokenizer, words."""
    if not texts:
        return 0
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    return int((np.asarray(tokenizer(list(texts))) != 0).sum())  # (N, L) ids, zero-padded
