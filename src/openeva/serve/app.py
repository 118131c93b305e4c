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

The model runs in one thread fed by two :class:`MicroBatcher` (images, texts); decoding runs in the default
thread pool; the event loop only routes. On shutdown (SIGTERM: uvicorn first lets in-flight requests finish)
the batchers drain and an unsaved index is written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from openeva.data.collection import DECODE_ERRORS, image_size_of, load_source
from openeva.serve.batching import MicroBatcher
from openeva.serve.classify import (
    label_probs,
    parse_labels,
    text_classifier,
    top_labels,
)
from openeva.serve.encoder import Encoder, load_encoder
from openeva.serve.index import Index
from openeva.serve.limits import (
    ApiError,
    Limits,
    LimitsMiddleware,
    check_image_count,
    check_texts,
    decode_image,
)
from openeva.serve.metrics import CONTENT_TYPE_LATEST, ServiceMetrics

STATIC_DIR = Path(__file__).parent / "static"
CLASSIFY_TEMPLATES = ("a photo of a {c}.", "{c}")


class TextsIn(BaseModel):
    texts: list[str] = Field(description="texts to embed")


class ImagesIn(BaseModel):
    images: list[str] = Field(description="base64-encoded image files")


class SearchIn(BaseModel):
    text: str = Field(description="the text query")
    k: int = Field(10, description="number of results")


class ServiceState:
    def __init__(self, limits: Limits, api_key: str | None):
        self.limits, self.api_key = limits, api_key
        self.encoder: Encoder | None = None
        self.index: Index | None = None
        self.index_path: Path | None = None
        self.ready = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.dirty = False
        self.metrics = ServiceMetrics()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openeva-model")
        self.image_batcher: MicroBatcher | None = None
        self.text_batcher: MicroBatcher | None = None
        self.index_lock = asyncio.Lock()


def create_app(model: str | None = None, pretrained: str | None = None, index_path=None, *,
               encoder: Encoder | None = None, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 32, max_wait_ms: float = 5.0, encoder_options: dict | None = None) -> FastAPI:
    """The service app. Give ``model`` (or a ready ``encoder``); without either, the index's model is used.

    ``model`` may be an ONNX export folder (``openeva export onnx``); ``encoder_options`` go to
    :func:`~openeva.serve.encoder.load_encoder` (precision, tome_r, int8), applied when the model loads."""
    state = ServiceState(limits or Limits(), api_key)
    state.index_path = Path(index_path).expanduser() if index_path else None

    def load() -> None:
        if state.index_path is not None and (state.index_path / "CURRENT").is_file():
            state.index = Index.load(state.index_path)
        name = model or (state.index.manifest.get("model") if state.index else None)
        if encoder is not None:
            state.encoder = encoder
        elif name is None:
            raise ValueError("no model: pass --model, or an --index that names its model")
        else:
            state.encoder = load_encoder(name, pretrained or (state.index.manifest.get("pretrained")
                                                              if state.index and not model else None),
                                         **(encoder_options or {}))
        if state.index is not None:
            state.index.check_compatible(state.encoder.info)
            state.metrics.index_size.set(len(state.index))

    async def load_in_background() -> None:
        try:
            await asyncio.to_thread(load)
            state.ready = True
        except Exception as err:  # reported by /readyz; the process stays up to say why
            state.load_error = f"{type(err).__name__}: {err}"

    def encode_image_items(items: list) -> list:
        return list(state.encoder.encode_images(torch.stack(items)))  # (B, 3, H, W) -> B x (D,)

    def encode_text_items(items: list) -> list:
        return list(state.encoder.encode_texts(items))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        m = state.metrics
        state.image_batcher = MicroBatcher(encode_image_items, max_batch, max_wait_ms / 1000, state.model_thread,
                                           on_batch=lambda n: m.batch_size.labels("image").observe(n))
        state.text_batcher = MicroBatcher(encode_text_items, max_batch, max_wait_ms / 1000, state.model_thread,
                                          on_batch=lambda n: m.batch_size.labels("text").observe(n))
        state.image_batcher.start()
        state.text_batcher.start()
        loader = asyncio.create_task(load_in_background())
        yield
        loader.cancel()
        await state.image_batcher.stop()
        await state.text_batcher.stop()
        async with state.index_lock:
            if state.dirty and state.index is not None and state.index_path is not None:
                await asyncio.to_thread(state.index.save, state.index_path)
                state.dirty = False
        state.model_thread.shutdown(wait=True)

    app = FastAPI(title="openeva", version="1", lifespan=lifespan,
                  description="Embed, search and classify images with an openeva CLIP model.")
    app.state.service = state
    app.add_middleware(LimitsMiddleware, limits=state.limits, state=state)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        # FastAPI's own handler echoes the input, and JSON cannot carry the inf / NaN that 1e400 / NaN parse to
        # (a 500); only the location and message of each problem are sent back
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()]
        return JSONResponse(ApiError(422, "invalid_request", "; ".join(problems)[:2000] or "invalid request").body(),
                            status_code=422)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        state.metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            state.metrics.in_flight.dec()
        route = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    # ------------------------------------------------------------------------------------------ helpers
    def need_model() -> Encoder:
        if not state.ready:
            raise ApiError(503, "not_ready", state.load_error or "the model is still loading")
        return state.encoder

    def need_index() -> Index:
        need_model()
        if state.index is None or len(state.index) == 0:
            raise ApiError(409, "no_index", "this service has no index to search (start it with --index)")
        return state.index

    def check_k(k: int) -> int:
        if not 1 <= k <= state.limits.max_k:
            raise ApiError(422, "bad_k", f"k must be in [1, {state.limits.max_k}], got {k}")
        return k

    async def bounded(coro):
        try:
            return await asyncio.wait_for(coro, state.limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"the request took longer than {state.limits.timeout_s} s") from None

    async def image_vectors(blobs: list[tuple[str, bytes]]) -> np.ndarray:
        enc = need_model()
        check_image_count(len(blobs), state.limits)

        def prepare():
            return [enc.preprocess(decode_image(data, state.limits, name)) for name, data in blobs]

        pixels = await asyncio.to_thread(prepare)  # decode + resize off the event loop
        state.metrics.queue_depth.labels("image").set(state.image_batcher.depth + len(pixels))
        vectors = await state.image_batcher.submit(pixels)
        return np.stack(vectors)  # (N, D)

    async def text_vectors(texts: list[str]) -> np.ndarray:
        need_model()
        check_texts(texts, state.limits)
        state.metrics.queue_depth.labels("text").set(state.text_batcher.depth + len(texts))
        return np.stack(await state.text_batcher.submit(list(texts)))  # (N, D)

    async def read_uploads(files: list[UploadFile]) -> list[tuple[str, bytes]]:
        check_image_count(len(files), state.limits)
        return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]

    def public_hits(hits: list[dict]) -> list[dict]:
        return [{k: h[k] for k in ("rank", "score", "row", "id", "caption", "width", "height")}
                | {"thumb": f"/v1/thumb/{h['row']}"} for h in hits]

    # ------------------------------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state.ready:
            raise ApiError(503, "not_ready", state.load_error or "the model is still loading")
        return {"ready": True, "model": state.encoder.info.get("model"), "dim": state.encoder.dim,
                "index_size": len(state.index) if state.index is not None else 0,
                "writes_enabled": state.api_key is not None}

    @app.get("/metrics")
    async def metrics():
        m = state.metrics
        if state.image_batcher is not None:
            m.queue_depth.labels("image").set(state.image_batcher.depth)
            m.queue_depth.labels("text").set(state.text_batcher.depth)
        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/embed/texts")
    async def embed_texts(body: TextsIn):
        vectors = await bounded(text_vectors(body.texts))
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    @app.post("/v1/embed/images")
    async def embed_images(files: list[UploadFile] = File(...)):
        blobs = await read_uploads(files)
        vectors = await bounded(image_vectors(blobs))
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    @app.post("/v1/embed/images/base64")
    async def embed_images_base64(body: ImagesIn):
        check_image_count(len(body.images), state.limits)
        blobs = []
        for i, text in enumerate(body.images):
            try:
                blobs.append((f"image {i}", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_base64", f"image {i} is not valid base64") from None
        vectors = await bounded(image_vectors(blobs))
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    @app.post("/v1/classify")
    async def classify(files: list[UploadFile] = File(...), labels: str = Form(...), k: int = Form(5)):
        names = _labels(labels)
        k = check_k(k)
        blobs = await read_uploads(files)

        async def work():
            vectors = await image_vectors(blobs)
            classifier = await asyncio.get_running_loop().run_in_executor(
                state.model_thread, text_classifier, state.encoder, names, list(CLASSIFY_TEMPLATES))
            probs = label_probs(vectors, classifier)  # (N, C)
            return [{"file": name, "label": top[0][0], "score": top[0][1],
                     "top_k": [{"label": lab, "score": s} for lab, s in top]}
                    for (name, _), top in zip(blobs, top_labels(probs, names, k))]

        return {"labels": names, "predictions": await bounded(work())}

    def _labels(labels: str) -> list[str]:
        try:
            names = parse_labels(labels)
        except ValueError as err:
            raise ApiError(422, "bad_labels", str(err)) from None
        if len(names) > state.limits.max_texts:
            raise ApiError(413, "too_many_labels", f"{len(names)} labels; the limit is {state.limits.max_texts}")
        check_texts(names, state.limits)
        return names

    @app.post("/v1/search")
    async def search_text(body: SearchIn):
        index = need_index()
        k = check_k(body.k)
        vectors = await bounded(text_vectors([body.text]))
        hits = await bounded(asyncio.to_thread(index.search, vectors, k))  # off the loop; waits while an add writes
        return {"query": {"text": body.text}, "results": public_hits(hits[0])}

    @app.post("/v1/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Form(10)):
        index = need_index()
        k = check_k(k)
        blobs = await read_uploads([file])
        vectors = await bounded(image_vectors(blobs))
        hits = await bounded(asyncio.to_thread(index.search, vectors, k))
        return {"query": {"image": blobs[0][0]}, "results": public_hits(hits[0])}

    @app.post("/v1/index/add")
    async def index_add(files: list[UploadFile] = File(...), x_api_key: str | None = Header(None)):
        if state.api_key is None:
            raise ApiError(403, "writes_disabled", "index writes are off: start the service with --api-key "
                           "(or OPENEVA_API_KEY)")
        if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), state.api_key.encode()):
            raise ApiError(401, "bad_api_key", "a valid X-API-Key header is required for index writes")
        if state.index_path is None:
            raise ApiError(409, "no_index", "this service has no --index folder to write to")
        blobs = await read_uploads(files)
        vectors = await bounded(image_vectors(blobs))  # (N, D), also validates every image
        async with state.index_lock:
            added = await asyncio.to_thread(_add_and_save, blobs, vectors)
        return {"added": added, "index_size": len(state.index)}

    def _add_and_save(blobs: list[tuple[str, bytes]], vectors: np.ndarray) -> int:
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

    @app.get("/v1/thumb/{row}", responses={200: {"content": {"image/jpeg": {}}}})
    async def thumb(row: int, size: int = 256):
        index = need_index()
        if not 0 <= row < len(index):
            raise ApiError(404, "no_such_row", f"row {row} is not in the index (0..{len(index) - 1})")
        if not 16 <= size <= 1024:
            raise ApiError(422, "bad_size", "size must be in [16, 1024]")

        def render() -> bytes:
            image = load_source(index.meta[row]["source"])
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            return buf.getvalue()

        try:
            data = await asyncio.to_thread(render)
        except (FileNotFoundError, *DECODE_ERRORS):
            raise ApiError(404, "unreadable", f"the image of row {row} can no longer be read") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
