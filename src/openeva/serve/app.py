"""The HTTP service (``openeva serve``): FastAPI under uvicorn, micro-batched inference, limits, metrics, a page.

Endpoints (all JSON unless noted; errors are ``{"error": {"code", "message"}}`` with a 4xx, or 503 when
saturated / timed out / not ready):

- ``POST /v1/embed/images`` (multipart ``files``), ``POST /v1/embed/images/base64`` (``{"images": [b64]}``),
  ``POST /v1/embed/texts`` (``{"texts": [...]}``) -> unit vectors
- ``POST /v1/classify`` (multipart ``files`` + ``labels`` "a,b,c" + ``k``) -> top-k labels per image
- ``POST /v1/search`` (``{"text", "k"}``), ``POST /v1/search/image`` (multipart ``file`` + ``k``) -> hits
- ``POST /v1/index/add`` (multipart ``files``, header ``X-API-Key``) -> adds to the index, saved atomically
- ``GET /v1/thumb/{row}`` -> a JPEG thumbnail of index row ``row`` (only files the index lists)
- ``GET /healthz``, ``GET /readyz`` (model loaded), ``GET /metrics`` (Prometheus), ``GET /openapi.json``
- ``GET /``: the web page (static/)

The pieces: :mod:`openeva.serve.state` (the state every route shares, passed by dependency, and the app's
lifespan), :mod:`openeva.serve.routes` (one router per concern), :mod:`openeva.serve.errors` (the error
response and its exception handlers), :mod:`openeva.serve.limits` (request limits and their middleware).
The model runs in one thread fed by two micro-batchers (images, texts); decoding runs in the default thread
pool; the event loop only routes. On shutdown (SIGTERM: uvicorn first lets in-flight requests finish) the
batchers drain and an unsaved index is written.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware

from openeva.serve.encoder import Encoder
from openeva.serve.errors import ApiError, api_error, invalid_request
from openeva.serve.limits import Limits, LimitsMiddleware
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
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


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
