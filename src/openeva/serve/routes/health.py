"""``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded), ``GET /metrics`` (Prometheus).

These three are answered even when the service is saturated (``limits.PROBE_PATHS``)."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from openeva.serve.metrics import CONTENT_TYPE_LATEST
from openeva.serve.openapi import errors
from openeva.serve.state import StateDep

router = APIRouter()


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    model: str | None
    dim: int
    index_size: int
    writes_enabled: bool
    worker: int  # the process id of the worker that answered (``--workers N`` runs N of them)


@router.get("/healthz", response_model=Health)
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=errors(503))
async def readyz(state: StateDep):
    encoder = state.need_model()
    index = state.current_index()
    return {"ready": True, "model": encoder.info.get("model"), "dim": encoder.dim,
            "index_size": len(index) if index is not None else 0, "writes_enabled": state.api_key is not None,
            "worker": os.getpid()}


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(state: StateDep):
    m = state.metrics
    m.queue_depth.labels("image").set(state.image_batcher.depth)
    m.queue_depth.labels("text").set(state.text_batcher.depth)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
