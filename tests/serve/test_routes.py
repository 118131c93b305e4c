"""Routes of the service one router at a time: a bare FastAPI app with that router over a small state of its
own (passed by ``dependency_overrides``), a fake encoder, no uvicorn and no model."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient
from running_server import png

from openeva.serve.app import create_app
from openeva.serve.errors import ApiError, api_error
from openeva.serve.limits import Limits
from openeva.serve.routes import embed, health, index
from openeva.serve.state import ServiceState, get_state


class FakeEncoder:
    """A fixed unit vector per text (from its hash) and per image (from its mean pixel): the Encoder interface."""

    dim = 8
    info = {"model": "fake"}

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32) / 255).permute(2, 0, 1)  # (3, 4, 4)

    def encode_images(self, images):  # (B, 3, H, W) -> (B, dim)
        v = images.float().mean(dim=(2, 3)).repeat(1, 3)[:, : self.dim].numpy() + 1e-3  # (B, dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_texts(self, texts):  # N strings -> (N, dim)
        v = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], np.uint8) for t in texts])
        v = v.astype(np.float32) + 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def client_of(router, state: ServiceState) -> TestClient:
    """One router alone, its state given by dependency override; the state runs as the app's lifespan."""
    app = FastAPI(lifespan=lambda app: state.running())
    app.include_router(router)
    app.add_exception_handler(ApiError, api_error)
    app.dependency_overrides[get_state] = lambda: state
    return TestClient(app)


def test_embed_texts_route_alone_batches_through_the_state():
    state = ServiceState(Limits(max_texts=2), encoder=FakeEncoder())
    state.load()  # ready now: nothing loads in the background
    with client_of(embed.router, state) as client:
        r = client.post("/v1/embed/texts", json={"texts": ["a red circle", "a blue star"]})
        assert r.status_code == 200 and r.json()["dim"] == 8
        assert np.allclose(r.json()["vectors"], FakeEncoder().encode_texts(["a red circle", "a blue star"]))
        image = client.post("/v1/embed/images", files=[("files", ("a.png", png(), "image/png"))])
        assert image.status_code == 200 and len(image.json()["vectors"]) == 1
        too_many = client.post("/v1/embed/texts", json={"texts": ["a", "b", "c"]})
        assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_texts"
        assert client.get("/healthz").status_code == 404  # only this router is served
    batched = state.metrics.registry.get_sample_value("openeva_batch_size_sum", {"kind": "text"})
    assert batched >= 2  # the texts went through the state's batcher


def test_readyz_route_alone_answers_503_with_retry_after_until_loaded():
    state = ServiceState(encoder=FakeEncoder())
    client = client_of(health.router, state)  # no lifespan run: nothing loads
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"error": {"message": "the model is still loading", "type": "server_error", "param": None,
                                  "code": "not_ready"}}  # OpenAI's error shape, every route's
    state.load()
    assert client.get("/readyz").json() == {"ready": True, "model": "fake", "dim": 8, "index_size": 0,
                                            "writes_enabled": False, "worker": os.getpid()}


def test_index_routes_alone_need_the_key_then_write_and_serve_the_row(tmp_path):
    state = ServiceState(api_key="k", index_path=tmp_path / "index", encoder=FakeEncoder())
    state.load()
    files = [("files", ("red.png", png(), "image/png"))]
    with client_of(index.router, state) as client:
        assert client.post("/v1/index/add", files=files).json()["error"]["code"] == "bad_api_key"
        added = client.post("/v1/index/add", files=files, headers={"x-api-key": "k"})
        assert added.json() == {"added": 1, "index_size": 1}
        assert client.get("/v1/thumb/0").headers["content-type"] == "image/jpeg"
    assert (tmp_path / "index" / "CURRENT").is_file()  # durable when the add returned


def test_state_without_a_model_or_an_index_says_so():
    with pytest.raises(ValueError, match="no model"):
        ServiceState().load()


def test_metrics_count_requests_under_their_route_path():
    app = create_app(encoder=FakeEncoder())
    app.state.service.load()
    with TestClient(app) as client:
        client.post("/v1/embed/texts", json={"texts": []})  # a 422 from the route
        text = client.get("/metrics").text
    assert 'openeva_requests_total{method="POST",route="/v1/embed/texts",status="422"} 1.0' in text
