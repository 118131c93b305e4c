"""The HTTP service (``openeva serve``): FastAPI under uvicorn, micro-batched inference, limits, metrics, a page.

Endpoints (all JSON unless noted; errors are OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
with a 4xx, or 503 when saturated / timed out / not ready):

- ``POST /v1/embeddings`` (OpenAI's embeddings API: texts, or images as data URLs), ``GET /v1/models``
- ``POST /v1/embed/images`` (multipart ``files``), ``POST /v1/embed/images/base64`` (``{"images": [b64]}``),
  ``POST /v1/embed/texts`` (``{"texts": [...]}``) -> unit vectors
- ``POST /v1/classify`` (multipart ``files`` + ``labels`` "a,b,c" + ``k``) -> top-k labels per image
- ``POST /v1/search`` (``{"text", "k", "threshold", "filter"}``), ``POST /v1/search/image`` (multipart ``file``
  + ``k`` + ``threshold`` + ``filter``) -> hits
- ``POST /v1/index/add`` (multipart ``files``), ``DELETE /v1/index/items?id=..`` (both with header ``X-API-Key``)
- ``GET /v1/thumb/{row}`` -> a JPEG thumbnail of index row ``row`` (only files the index lists)
- ``GET /healthz``, ``GET /readyz`` (model loaded), ``GET /metrics`` (Prometheus text), ``GET /openapi.json``
  (every status, limit and content type stated: :mod:`openeva.serve.openapi`)
- ``GET /``: the web page (static/)

The pieces: :mod:`openeva.serve.state` (the state every route shares, passed by dependency, and the app's
lifespan), :mod:`openeva.serve.routes` (one router per concern), :mod:`openeva.serve.errors` (the error
response and its exception handlers), :mod:`openeva.serve.limits` (request limits and their middleware).
The model runs in one thread fed by two micro-batchers (images, texts); decoding runs in the default thread
pool; the event loop only routes. Several worker processes (``--workers``, :func:`app_from_environment`) may
serve one index folder: each re-opens the index when another wrote a new version (a stat per request).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from openeva.serve.encoder import Encoder
from openeva.serve.errors import ApiError, api_error, http_error, invalid_request
from openeva.serve.limits import Limits, LimitsMiddleware
from openeva.serve.openapi import service_openapi
from openeva.serve.routes import ROUTERS
from openeva.serve.routes.page import STATIC_DIR
from openeva.serve.state import ServiceState, lifespan


def create_app(model: str | None = None, pretrained: str | None = None, index_path=None, *,
               encoder: Encoder | None = None, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 32, max_wait_ms: float = 5.0, encoder_options: dict | None = None) -> FastAPI:
    """The service app. Give ``model`` (or a ready ``encoder``); without either, the index's model is used.

    ``model`` may be an ONNX export folder (``openeva export onnx``); ``encoder_options`` go to
    :func:`~openeva.serve.encoder.load_encoder` (precision, tome_r, int8), applied when the model loads."""
    state = ServiceState(limits, api_key, index_path, model=model, pretrained=pretrained, encoder=encoder,
                         encoder_options=encoder_options, max_batch=max_batch, max_wait_ms=max_wait_ms)
    app = FastAPI(title="openeva", version="1", lifespan=lifespan,
                  description="Embed, search and classify images with an openeva CLIP model.")
    app.state.service = state
    app.add_middleware(LimitsMiddleware, limits=state.limits, state=state)
    app.add_middleware(BaseHTTPMiddleware, dispatch=observe)  # outside the limits: refusals are counted too
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: service_openapi(app, state)  # every status, limit and content type it really uses
    return app


SERVE_CONFIG_ENV = "OPENEVA_SERVE_CONFIG"  # JSON settings for the worker processes of `openeva serve --workers N`


def app_from_environment() -> FastAPI:
    """uvicorn's app factory for ``openeva serve --workers N``: each worker process builds its own app (own model,
    own memory map of the shared index folder) from the settings the CLI put in :data:`SERVE_CONFIG_ENV`, read
    when the worker calls this, never at import."""
    raw = os.environ.get(SERVE_CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{SERVE_CONFIG_ENV} is not set: start worker processes with `openeva serve --workers N`")
    config = json.loads(raw)
    threads = config.pop("torch_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    limits = Limits(**config.pop("limits", {}))
    options = dict(config.pop("encoder_options", None) or {})
    options["log"] = lambda line: print(f"[worker {os.getpid()}] {line}", file=sys.stderr)
    return create_app(**config, limits=limits, encoder_options=options)


async def observe(request: Request, call_next):
    """Middleware: count each request by route, method and status, and time it (the /metrics series)."""
    metrics = request.app.state.service.metrics
    start = time.perf_counter()
    metrics.in_flight.inc()
    try:
        response = await call_next(request)
    finally:
        metrics.in_flight.dec()
    route = getattr(request.scope.get("route"), "path", "unmatched")
    metrics.requests.labels(route, request.method, str(response.status_code)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - start)
    return response
