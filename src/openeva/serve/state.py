"""What every route of the HTTP service shares, and how a route gets it.

One :class:`ServiceState` holds the encoder, the index, the limits, the two :class:`MicroBatcher` feeding the
one model thread, the metrics and the API key. ``create_app`` keeps it on ``app.state.service`` and each route
takes it as a parameter typed :data:`StateDep` (``Depends(get_state)``), so a route is a plain function and a
test serves one router over a state of its own (``app.dependency_overrides[get_state]``). Its methods are
the steps many routes share: refuse until the model is loaded, bound a request's time, turn images and texts
into vectors through the batchers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request, UploadFile

from openeva.serve.batching import MicroBatcher
from openeva.serve.encoder import Encoder, load_encoder
from openeva.serve.errors import ApiError
from openeva.index import MAX_K, Index
from openeva.serve.limits import Limits, check_image_count, check_texts, decode_image
from openeva.serve.metrics import ServiceMetrics

T = TypeVar("T")


class ServiceState:
    """The service's model, index, limits, batchers, metrics and API key.

    Give ``encoder`` (ready) or ``model`` / ``pretrained`` / ``encoder_options`` (loaded by :meth:`load` with
    :func:`~openeva.serve.encoder.load_encoder`); with neither, the model the index names is loaded.
    """

    def __init__(self, limits: Limits | None = None, api_key: str | None = None, index_path=None, *,
                 model: str | None = None, pretrained: str | None = None, encoder: Encoder | None = None,
                 encoder_options: dict | None = None, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.limits, self.api_key = limits or Limits(), api_key
        if self.limits.max_k > MAX_K:
            raise ValueError(f"max_k {self.limits.max_k} is above what the index answers (MAX_K = {MAX_K})")
        self.index_path = Path(index_path).expanduser() if index_path else None
        self.model, self.pretrained, self.encoder_options = model, pretrained, dict(encoder_options or {})
        self.encoder: Encoder | None = encoder
        self.index: Index | None = None
        self.ready = False
        self.load_error: str | None = None
        self.in_flight = 0  # counted by LimitsMiddleware
        self.metrics = ServiceMetrics()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openeva-model")
        m, wait_s = self.metrics, max_wait_ms / 1000
        self.image_batcher = MicroBatcher(self._encode_images, max_batch, wait_s, self.model_thread,
                                          on_batch=lambda n: m.batch_size.labels("image").observe(n))
        self.text_batcher = MicroBatcher(self._encode_texts, max_batch, wait_s, self.model_thread,
                                         on_batch=lambda n: m.batch_size.labels("text").observe(n))
        # one index write at a time in this process (the index's lock file serialises them across processes)
        self.index_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------------------ life
    def load(self) -> None:
        """Open the index (if its folder has one) and the model, check that they match, and mark the service
        ready. Blocking: at startup it runs in a thread; a test may call it directly."""
        if self.index_path is not None and (self.index_path / "CURRENT").is_file():
            self.index = Index.open(self.index_path)
        if self.encoder is None:
            manifest = self.index.manifest if self.index is not None else {}
            name = self.model or manifest.get("model")
            if name is None:
                raise ValueError("no model: pass --model, or an --index that names its model")
            pretrained = self.pretrained or (manifest.get("pretrained") if not self.model else None)
            self.encoder = load_encoder(name, pretrained, **self.encoder_options)
        if self.index is not None:
            self.index.check_compatible(self.encoder.info)
            self.metrics.index_size.set(len(self.index))
        self.ready = True

    async def _load_in_background(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception as err:  # reported by /readyz; the process stays up to say why
            self.load_error = f"{type(err).__name__}: {err}"

    @asynccontextmanager
    async def running(self):
        """While the app serves: the batchers run and the model loads in the background (unless :meth:`load`
        ran already). On exit (SIGTERM: uvicorn first lets in-flight requests finish) the batchers drain, a write
        under way finishes (each write is durable when it returns) and the model thread stops."""
        self.image_batcher.start()
        self.text_batcher.start()
        loader = None if self.ready else asyncio.create_task(self._load_in_background())
        yield
        if loader is not None:
            loader.cancel()
        await self.image_batcher.stop()
        await self.text_batcher.stop()
        # an add or delete in flight finishes (every write is on disk when it returns) before the model stops
        async with self.index_lock:
            pass
        self.model_thread.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ checks
    def need_model(self) -> Encoder:
        if not self.ready:
            raise ApiError(503, "not_ready", self.load_error or "the model is still loading")
        return self.encoder

    def current_index(self) -> Index | None:
        """The index as the last write left it, by this worker or any other: re-opened when another process
        made a new version live (``refresh`` is a stat of the folder's CURRENT pointer), opened when the
        folder got its first index."""
        if self.index is not None:
            self.index.refresh()
        elif self.index_path is not None and (self.index_path / "CURRENT").is_file():
            self.index = Index.open(self.index_path)
        return self.index

    def need_index(self) -> Index:
        self.need_model()
        index = self.current_index()
        if index is None or len(index) == 0:
            raise ApiError(409, "no_index", "this service has no index to search (start it with --index)")
        return index

    def model_ids(self) -> list[str]:
        """The names ``/v1/embeddings`` accepts for the served model: the name it was loaded by and, for a
        checkpoint folder, the folder's own name."""
        name = str(self.need_model().info.get("model") or "openeva")
        base = Path(name).name
        return [name] + ([base] if base and base != name else [])

    def check_k(self, k: int) -> int:
        """``k`` within [1, max_k] (``--max-k``, at most the index's MAX_K), else a 422."""
        if not 1 <= k <= self.limits.max_k:
            raise ApiError(422, "bad_k", f"k must be in [1, {self.limits.max_k}], got {k}")
        return k

    async def bounded(self, work: Awaitable[T]) -> T:
        """``await work`` within the request timeout, else a 503."""
        try:
            return await asyncio.wait_for(work, self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"the request took longer than {self.limits.timeout_s} s") from None

    # ------------------------------------------------------------------------------------------ vectors
    async def read_uploads(self, files: list[UploadFile]) -> list[tuple[str, bytes]]:
        """(name, bytes) of each uploaded file, after checking how many there are."""
        check_image_count(len(files), self.limits)
        return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]

    async def image_vectors(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """(N, D) unit vectors of N image files; decoding and resizing run off the event loop."""
        encoder = self.need_model()
        check_image_count(len(blobs), self.limits)

        def prepare():
            return [encoder.preprocess(decode_image(data, self.limits, name)) for name, data in blobs]

        pixels = await asyncio.to_thread(prepare)  # N x (3, H, W)
        self.metrics.queue_depth.labels("image").set(self.image_batcher.depth + len(pixels))
        return np.stack(await self.image_batcher.submit(pixels))  # (N, D)

    async def text_vectors(self, texts: list[str]) -> np.ndarray:
        """(N, D) unit vectors of N texts."""
        self.need_model()
        check_texts(texts, self.limits)
        self.metrics.queue_depth.labels("text").set(self.text_batcher.depth + len(texts))
        return np.stack(await self.text_batcher.submit(list(texts)))  # (N, D)

    def _encode_images(self, items: list) -> list:
        return list(self.encoder.encode_images(torch.stack(items)))  # (B, 3, H, W) -> B x (D,)

    def _encode_texts(self, items: list) -> list:
        return list(self.encoder.encode_texts(items))  # B x (D,)


def get_state(request: Request) -> ServiceState:
    """The dependency every route takes its state through: the one ``create_app`` put on ``app.state``."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def lifespan(app: FastAPI):
    """FastAPI's lifespan: the app's service state runs while the app serves."""
    return app.state.service.running()
