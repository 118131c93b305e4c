"""``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded), ``GET /metrics`` (Prometheus).

These three are answered even when the service is saturated (``limits.PROBE_PATHS``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from openeva.serve.metrics import CONTENT_TYPE_LATEST
from openeva.serve.state import StateDep

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep):
    encoder = state.need_model()
    return {"ready": True, "model": encoder.info.get("model"), "dim": encoder.dim,
            "index_size": len(state.index) if state.index is not None else 0,
            "writes_enabled": state.api_key is not None}


@router.get("/metrics")
async def metrics(state: StateDep):
    m = state.metrics
    m.queue_depth.labels("image").set(state.image_batcher.depth)
    m.queue_depth.labels("text").set(state.text_batcher.depth)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
