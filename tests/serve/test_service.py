"""The HTTP service through a real uvicorn on 127.0.0.1 and a real HTTP client: endpoints, limits, writes,
micro-batching, a schema-driven property-based fuzz (no 5xx), and SIGTERM during a write."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from running_server import RunningServer, free_port, png

from openeva.serve import Index, embed
from openeva.serve.app import create_app
from openeva.serve.encoder import TorchClipEncoder
from openeva.serve.limits import Limits

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return TorchClipEncoder(clip_dir)


@pytest.fixture(scope="module")
def index_dir(encoder, shapes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    embed(shapes_dir, out=root / "emb", encoder=encoder, progress=False)
    Index.from_embeddings(root / "emb").save(root / "index")
    return root / "index"


@pytest.fixture(scope="module")
def serve(encoder, index_dir, tmp_path_factory):
    servers = []

    def start(copy_index: bool = False, **kwargs):
        path = index_dir
        if copy_index:
            path = tmp_path_factory.mktemp("idx") / "index"
            shutil.copytree(index_dir, path)
        server = RunningServer(create_app(encoder=encoder, index_path=path, **kwargs))
        server.index_path = path
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def test_endpoints_answer_with_the_models_vectors(serve, encoder):
    s = serve(limits=Limits(max_body_bytes=2_000_000))
    c = s.client
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["ready"] and ready["dim"] == 32 and ready["index_size"] == 24 and not ready["writes_enabled"]
    texts = c.post("/v1/embed/texts", json={"texts": ["a red circle", "a blue star"]}).json()
    assert np.allclose(texts["vectors"], encoder.encode_texts(["a red circle", "a blue star"]), atol=1e-5)
    image = png()
    direct = encoder.encode_images(encoder.preprocess(Image.open(io.BytesIO(image)).convert("RGB"))[None])
    multi = c.post("/v1/embed/images", files=[("files", ("a.png", image, "image/png"))] * 2).json()
    b64 = c.post("/v1/embed/images/base64", json={"images": [base64.b64encode(image).decode()]}).json()
    assert np.allclose(multi["vectors"], np.repeat(direct, 2, 0), atol=1e-5)
    assert np.allclose(b64["vectors"], direct, atol=1e-5)
    hits = c.post("/v1/search", json={"text": "a red circle", "k": 5}).json()["results"]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and "path" not in hits[0]
    thumb = c.get(hits[0]["thumb"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    by_image = c.post("/v1/search/image", files={"file": ("q.png", image, "image/png")}, data={"k": "3"}).json()
    assert len(by_image["results"]) == 3
    labels = c.post("/v1/classify", files=[("files", ("a.png", image, "image/png"))],
                    data={"labels": "circle,square,star", "k": "2"}).json()
    top = labels["predictions"][0]["top_k"]
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"]
    assert c.get("/v1/thumb/24").status_code == 404 and c.get("/v1/thumb/-1").status_code == 404
    assert c.get("/v1/thumb/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert c.get("/static/../app.py").status_code == 404
    metrics = c.get("/metrics").text
    for name in ("openeva_requests_total", "openeva_request_latency_seconds_bucket", "openeva_batch_size_bucket",
                 "openeva_queue_depth"):
        assert name in metrics
    assert "/v1/search" in c.get("/openapi.json").json()["paths"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(serve, encoder):
    s = serve(max_batch=16, max_wait_ms=50)
    texts = [f"a shape number {i}" for i in range(12)]
    expected = encoder.encode_texts(texts)
    results = [None] * len(texts)

    def one(i):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            results[i] = c.post("/v1/embed/texts", json={"texts": [texts[i]]}).json()["vectors"][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.allclose(np.array(results), expected, atol=1e-5)
    metrics = s.client.get("/metrics").text
    count = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith('openeva_batch_size_count{kind="text"}')))
    assert count < len(texts)  # some requests shared a model call


def test_every_limit_answers_its_4xx(serve):
    s = serve(limits=Limits(max_body_bytes=300_000, max_pixels=1_000_000, max_images=2, max_texts=3,
                            max_text_chars=20))
    c = s.client

    def code(r):
        return r.status_code, r.json()["error"]["code"]

    assert code(c.post("/v1/embed/images", files={"files": ("big.bin", b"x" * 400_000)})) == (413, "body_too_large")
    bomb = png(size=(3000, 3000))  # 9 Mpx in a few KB
    assert len(bomb) < 300_000
    assert code(c.post("/v1/embed/images", files={"files": ("bomb.png", bomb)})) == (413, "too_many_pixels")
    assert code(c.post("/v1/embed/images", files={"files": ("a.txt", b"hello")})) == (415, "unsupported_image")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    assert code(c.post("/v1/embed/images", files={"files": ("a.tif", tiff.getvalue())})) == (415, "unsupported_image")
    truncated = png()[:60]
    assert c.post("/v1/embed/images", files={"files": ("t.png", truncated)}).status_code in (400, 415)
    assert code(c.post("/v1/embed/images", files=[("files", ("a.png", png()))] * 3)) == (413, "too_many_images")
    assert code(c.post("/v1/embed/texts", json={"texts": ["a"] * 4})) == (413, "too_many_texts")
    assert code(c.post("/v1/embed/texts", json={"texts": ["x" * 21]})) == (413, "text_too_long")
    assert code(c.post("/v1/embed/texts", json={"texts": []})) == (422, "no_texts")
    assert code(c.post("/v1/embed/images/base64", json={"images": ["@@@"]})) == (400, "bad_base64")
    assert code(c.post("/v1/search", json={"text": "a", "k": 0})) == (422, "bad_k")
    assert c.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    # values JSON has no room for: 1e400 parses to inf, NaN is a bare token; a 422 that does not echo them
    for body in (b'{"text": "a", "k": 1e400}', b'{"text": "a", "k": NaN}'):
        r = c.post("/v1/search", content=body, headers={"content-type": "application/json"})
        assert code(r) == (422, "invalid_request")
    lone_surrogate = b'{"texts": ["a\\ud800b"]}'
    assert code(c.post("/v1/embed/texts", content=lone_surrogate,
                       headers={"content-type": "application/json"})) == (422, "bad_text")
    strip = png(size=(4000, 20))  # 80 kpx, under the pixel cap, but 200:1
    assert code(c.post("/v1/embed/images", files={"files": ("strip.png", strip)})) == (413, "bad_image_shape")
    slow = serve(limits=Limits(timeout_s=1e-6))
    assert code(slow.client.post("/v1/embed/texts", json={"texts": ["a"]})) == (503, "timeout")


def test_saturation_answers_503(serve):
    s = serve(limits=Limits(max_concurrent=1))
    release = threading.Event()

    def slow_body():
        yield b'{"texts": ["a'
        release.wait(30)
        yield b'"]}'

    def hold():  # a request whose body never finishes until released: it occupies the one slot
        return threading.Thread(target=lambda: httpx.post(f"{s.url}/v1/embed/texts", content=slow_body(),
                                                          headers={"content-type": "application/json"}, timeout=60))

    holder = hold()
    holder.start()
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            time.sleep(0.3)  # probes are spaced out so the holder's request is not the one turned away
            if not holder.is_alive():  # it arrived while a probe was in flight and got the 503: try again
                holder = hold()
                holder.start()
                continue
            r = s.client.get("/openapi.json")
            status = r.status_code
            if status == 503:
                break
        assert status == 503 and r.json()["error"]["code"] == "saturated" and r.headers["retry-after"] == "1"
        # health, readiness and metrics answer while saturated: a busy service must not be restarted as dead
        assert [s.client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]
    finally:
        release.set()
        holder.join()
    assert s.client.get("/healthz").status_code == 200


def test_writes_need_the_api_key_and_persist(serve):
    readonly = serve()
    files = [("files", ("red.png", png(), "image/png"))]
    assert readonly.client.post("/v1/index/add", files=files).json()["error"]["code"] == "writes_disabled"
    s = serve(copy_index=True, api_key="s3cret")
    assert s.client.post("/v1/index/add", files=files).status_code == 401
    assert s.client.post("/v1/index/add", files=files, headers={"x-api-key": "wrong"}).status_code == 401
    r = s.client.post("/v1/index/add", files=files + [("files", ("blue.png", png(color=(0, 0, 250))))],
                      headers={"x-api-key": "s3cret"})
    assert r.status_code == 200 and r.json() == {"added": 2, "index_size": 26}
    assert len(Index.load(s.index_path)) == 26
    again = s.client.post("/v1/index/add", files=files, headers={"x-api-key": "s3cret"}).json()
    assert again["added"] == 0  # same bytes, same id
    hits = s.client.post("/v1/search/image", files={"file": ("q.png", png())}, data={"k": "1"}).json()["results"]
    assert hits[0]["id"].startswith("upload/") and s.client.get(hits[0]["thumb"]).status_code == 200


def test_adds_start_a_new_index_and_searches_run_beside_them(encoder, tmp_path):
    """A service pointed at a folder with no index yet builds one on its first add (its uploads/ folder is
    part of the index); searches sent while adds write all answer 200 with rows of the index."""
    s = RunningServer(create_app(encoder=encoder, index_path=tmp_path / "fresh", api_key="k"))
    try:
        first = s.client.post("/v1/index/add", files=[("files", ("red.png", png()))], headers={"x-api-key": "k"})
        assert first.status_code == 200 and first.json() == {"added": 1, "index_size": 1}
        assert (tmp_path / "fresh" / "CURRENT").is_file() and (tmp_path / "fresh" / "uploads").is_dir()
        codes, sizes = [], []

        def search_many():
            with httpx.Client(base_url=s.url, timeout=60) as c:
                for _ in range(15):
                    r = c.post("/v1/search", json={"text": "a red square", "k": 50})
                    codes.append(r.status_code)
                    sizes.append(len(r.json()["results"]))

        searcher = threading.Thread(target=search_many)
        searcher.start()
        for i in range(8):
            color = (i * 30, 255 - i * 30, 100)
            r = s.client.post("/v1/index/add", files=[("files", (f"c{i}.png", png(color=color)))],
                              headers={"x-api-key": "k"})
            assert r.status_code == 200
        searcher.join()
        assert set(codes) == {200} and 1 <= min(sizes) and max(sizes) <= 9
        assert len(Index.load(tmp_path / "fresh")) == 9
    finally:
        s.stop()


def test_fuzz_the_openapi_schema_finds_no_5xx(serve):
    """Property-based requests generated from the service's own OpenAPI schema (bounded), plus junk bodies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    s = serve(copy_index=True, api_key="k", limits=Limits(max_body_bytes=100_000, max_pixels=250_000))
    schema = s.client.get("/openapi.json").json()

    def resolve(node):
        while "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=10)

    def from_schema(node):
        node = resolve(node)
        if "anyOf" in node:
            return st.one_of([from_schema(n) for n in node["anyOf"]])
        kind = node.get("type")
        if kind == "object":
            props = node.get("properties", {})
            return st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in node.get("required", [])},
                                         optional={k: from_schema(v) for k, v in props.items()
                                                   if k not in node.get("required", [])})
        if kind == "array":
            return st.lists(from_schema(node.get("items", {})), max_size=5)
        if kind == "integer":
            return st.integers(-(2**40), 2**40)
        if kind == "string" and node.get("format") == "binary":
            return st.binary(max_size=200) | st.sampled_from([png((4, 4)), png((600, 600)), b"GIF89a"])
        if kind == "string":
            return st.text(max_size=40)
        return junk

    operations = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            body_kind = next(iter(content), None)
            body_schema = content[body_kind]["schema"] if body_kind else None
            operations.append((path, method, body_kind, body_schema, op.get("parameters", [])))
    assert len(operations) >= 10

    @st.composite
    def requests(draw):
        path, method, body_kind, body_schema, params = draw(st.sampled_from(operations))
        url = path
        for p in params:
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", str(draw(st.integers(-5, 40) | st.text(
                    alphabet="abc./%09", min_size=1, max_size=8))))
        query = {p["name"]: draw(st.integers(-5, 5000)) for p in params if p["in"] == "query"}
        headers = {"x-api-key": draw(st.sampled_from(["k", "wrong"]))}
        kwargs = {"params": query, "headers": headers}
        if body_kind == "application/json":
            kwargs["json"] = draw(from_schema(body_schema) | junk)
        elif body_kind == "multipart/form-data":
            fields = draw(from_schema(body_schema))
            files, data = [], {}
            for name, value in fields.items():
                if isinstance(value, bytes):
                    files.append((name, ("f.bin", value)))
                elif isinstance(value, list) and all(isinstance(v, bytes) for v in value):
                    files += [(name, ("f.bin", v)) for v in value]
                else:
                    data[name] = str(value)
            kwargs["files"] = files or None
            kwargs["data"] = data
        return method, url, kwargs

    seen = []

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests())
    def no_server_errors(request):
        method, url, kwargs = request
        r = s.client.request(method.upper(), url, **kwargs)
        seen.append(r.status_code)
        assert r.status_code < 500 or r.json()["error"]["code"] in ("saturated", "timeout"), (url, r.text[:300])

    no_server_errors()
    assert len(seen) == 150 and any(code < 300 for code in seen) and any(400 <= code < 500 for code in seen)


def test_sigterm_during_a_write_loses_nothing(clip_dir, index_dir, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OPENEVA_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "openeva", "serve", "--model", clip_dir, "--index", str(index),
                             "--port", str(port), "--max-images", "24"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        files = [("files", (f"{i}.png", png(size=(900, 900), color=(i * 10, 0, 0)))) for i in range(24)]
        result = {}
        writer = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{url}/v1/index/add", files=files, headers={"x-api-key": "k"}, timeout=120)))
        writer.start()
        while writer.is_alive():  # wait until the write is inside the app, then ask the server to stop
            metrics = httpx.get(f"{url}/metrics").text
            if any(line.startswith("openeva_requests_in_flight ") and float(line.split()[-1]) >= 2
                   for line in metrics.splitlines()):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        writer.join(timeout=120)
        # uvicorn shuts down gracefully, then re-raises the signal for its parent to see: -SIGTERM (or 0)
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode()
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log, log[-2000:]
    assert result["r"].status_code == 200, log[-2000:]
    assert result["r"].json()["added"] == 24
    assert len(Index.load(index)) == 24 + 24
