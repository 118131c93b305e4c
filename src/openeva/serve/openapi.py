"""The service's OpenAPI schema, made to state what the service really does.

FastAPI writes a schema from the routes' signatures; that schema alone says neither which errors a route
answers with (413 from the body cap, 415 for an unknown image format, 503 while loading or saturated, ...),
nor the limits this server was started with (``--max-texts``, ``--max-k``, ...), nor which model it serves.
This module adds them:

- :func:`errors` is the ``responses=`` a route declares: each status with :class:`~openeva.serve.errors.
  ErrorResponse` (the one error body) and what it means.
- request fields carry ``x-openeva-limit`` (``{"maxItems": "max_texts"}``): :func:`service_openapi` puts this
  server's :class:`~openeva.serve.limits.Limits` values there, so the schema's bounds are the ones enforced.
- every operation gets the answers no route raises itself: 503 (saturated, with ``Retry-After``) and, for a
  request with a body, 400 (unparseable body), 413 (body cap) and 422; FastAPI's own 422 model is replaced
  by the one error body.
- once the model is loaded, ``/v1/embeddings``'s ``model`` and ``dimensions`` are pinned to the served model.

The other direction holds too: the server refuses exactly what the schema refuses. Blank texts are the ones
made of :data:`~openeva.serve.limits.BLANK_CHARS` (the pattern here is built from it), and integer fields are
:data:`JsonInt` / :data:`FormInt` (JSON Schema's integer: ``5.0`` is one, ``true`` and ``"5"`` are not), which
schemathesis checks both ways (tests/serve/test_openapi_contract.py).
"""

from __future__ import annotations

import copy
from typing import Annotated

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BeforeValidator

from openeva.serve.errors import ErrorResponse
from openeva.serve.limits import BLANK_CHARS, PROBE_PATHS  # probes are never saturated; /readyz may say 503

# a text with at least one character that is not blank (the server's check_texts refuses the others)
NON_BLANK_PATTERN = "[^" + "".join(f"\\u{ord(c):04x}" for c in BLANK_CHARS) + "]"

MEANINGS = {
    400: "the body cannot be parsed, or a field's content cannot be read (bad base64, an empty or corrupt image)",
    401: "a write without a valid X-API-Key header",
    403: "writes are off on this server (it was started without --api-key)",
    404: "no such resource (row, model)",
    409: "the service has no index (start it with --index), or no index folder to write to",
    413: "over a limit of this server (body bytes, images, texts, characters, pixels)",
    415: "an image in a format the service does not read (JPEG, PNG, WEBP, BMP, GIF are read)",
    422: "the request does not match this schema (types, bounds, empty texts, ...)",
    503: "not ready (the model is loading), saturated, or timed out: retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
# an 8x8 red PNG: the schema's examples are requests the service answers with a 200
EXAMPLE_PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISfHgA0wMeAAg1MCANDKARQfGKMRAAAAAEl"
                   "FTkSuQmCC")


def _integer_only(value):
    """JSON Schema's integer: 5 and 5.0, never true or "5" (which pydantic's lax mode would take)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("must be an integer")
    return value


def _form_integer(value):
    """A form field's text as JSON Schema's integer: "5" and "5.0" (an integral number however written)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # pydantic says why it is not an integer
        if number.is_integer() and abs(number) < 2**63:
            return int(number)
    return value


# integer fields exactly as the schema's "type": "integer" says, in a JSON body and in a form
JsonInt = Annotated[int, BeforeValidator(_integer_only)]
FormInt = Annotated[int, BeforeValidator(_form_integer)]


def errors(*statuses: int) -> dict:
    """The ``responses=`` of a route that answers with these error statuses."""
    return {s: {"model": ErrorResponse, "description": MEANINGS[s]} for s in statuses}


def limit(**fields: str) -> dict:
    """``json_schema_extra`` for a request field bounded by the server's limits: ``limit(maxItems="max_texts")``."""
    return {"x-openeva-limit": dict(fields)}


def service_openapi(app: FastAPI, state) -> dict:
    """The schema of ``app`` served with ``state``; kept once the model is loaded (it names the model)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema = _fill_limits(copy.deepcopy(schema), state.limits)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            responses = op.setdefault("responses", {})
            has_body = "requestBody" in op
            if has_body or op.get("parameters"):
                responses["422"] = _error_response(422, error_ref)
            if has_body:  # a body that is not JSON / multipart at all, or over the byte cap
                responses.setdefault("400", _error_response(400, error_ref))
                responses.setdefault("413", _error_response(413, error_ref))
            if path not in PROBE_PATHS:
                responses.setdefault("503", _error_response(503, error_ref))
            if "503" in responses:
                responses["503"]["headers"] = RETRY_AFTER
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if state.ready and state.encoder is not None:
        _pin_model(components, state)
        app.openapi_schema = schema
    return schema


def _error_response(status: int, ref: dict) -> dict:
    return {"description": MEANINGS[status], "content": {"application/json": {"schema": ref}}}


def _fill_limits(node, limits):
    """Replace every ``x-openeva-limit`` by the limit values it names."""
    if isinstance(node, dict):
        wanted = node.pop("x-openeva-limit", None)
        for key, value in list(node.items()):
            node[key] = _fill_limits(value, limits)
        if wanted:
            for key, name in wanted.items():
                node[key] = getattr(limits, name)
        return node
    if isinstance(node, list):
        return [_fill_limits(v, limits) for v in node]
    return node


def _pin_model(components: dict, state) -> None:
    """``/v1/embeddings`` accepts only the served model's names, and only its own dimension."""
    request = components.get("EmbeddingsRequest", {})
    body = request.get("properties", {})
    if "model" in body:
        body["model"] = {**body["model"], "enum": state.model_ids()}
        request["examples"] = [{"model": state.model_ids()[-1], "input": ["a red circle",
                                                                         f"data:image/png;base64,{EXAMPLE_PNG_B64}"]}]
    if "dimensions" in body:
        body["dimensions"] = {"anyOf": [{"type": "integer", "enum": [state.encoder.dim]}, {"type": "null"}],
                              "description": body["dimensions"].get("description", "")}
