"""``openeva serve --workers 2``: two real uvicorn worker processes on 127.0.0.1 serving one index folder. A write
(add, delete) through one worker is seen by every worker on its next request; reads keep being answered while
a write is in progress."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
from running_server import free_port, png

from openeva.serve.encoder import TorchClipEncoder

SRC = str(Path(__file__).resolve().parents[2] / "src")
pytestmark = pytest.mark.slow  # two worker processes each load torch and the model: about a minute on 2 cores
KEY = {"x-api-key": "k"}


@pytest.fixture(scope="module")
def two_workers(clip_dir, shapes_dir, build_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    index = build_index(shapes_dir, root, TorchClipEncoder(clip_dir))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OPENEVA_API_KEY": "k"}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "openeva", "serve", "--model", clip_dir, "--index", str(index),
                             "--port", str(port), "--workers", "2", "--max-images", "16"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        pids = set()
        deadline = time.monotonic() + 180
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers up (a fresh connection each time)
            try:
                r = httpx.get(f"{url}/readyz", timeout=10)
                if r.status_code == 200:
                    pids.add(r.json()["worker"])
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert len(pids) == 2, (root / "serve.log").read_text()[-3000:]
        yield url, index
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def ask_each_worker(url: str, ask, tries: int = 200) -> dict:
    """``ask(client)`` on fresh connections (so the kernel spreads them over the workers) until both workers
    answered, at most ``tries`` times; ``{worker pid: [answers]}``. readyz and the question go over one
    connection, so they reach the same worker."""
    answers: dict[int, list] = {}
    for _ in range(tries):
        with httpx.Client(base_url=url, timeout=60) as c:
            pid = c.get("/readyz").json()["worker"]
            answers.setdefault(pid, []).append(ask(c))
        if len(answers) == 2 and sum(map(len, answers.values())) >= 10:
            break
    return answers


def top_hit(c: httpx.Client, image: bytes) -> dict:
    r = c.post("/v1/search/image", files={"file": ("q.png", image)}, data={"k": "1"})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_a_write_through_one_worker_is_seen_by_every_worker(two_workers):
    url, _ = two_workers
    image = png(color=(10, 240, 60))
    added = httpx.post(f"{url}/v1/index/add", files=[("files", ("green.png", image))], headers=KEY, timeout=60)
    assert added.status_code == 200 and added.json()["added"] == 1, added.text
    seen = ask_each_worker(url, lambda c: (top_hit(c, image)["id"], c.get("/readyz").json()["index_size"]))
    assert len(seen) == 2  # both workers answered, and every answer saw the new row
    new_id = next(iter(seen.values()))[0][0]
    assert new_id.startswith("upload/")
    assert all(answer == (new_id, 25) for answers in seen.values() for answer in answers), seen
    deleted = httpx.request("DELETE", f"{url}/v1/index/items", params={"id": new_id}, headers=KEY, timeout=60)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1, deleted.text
    after = ask_each_worker(url, lambda c: (top_hit(c, image)["id"], c.get("/readyz").json()["index_size"]))
    assert len(after) == 2
    assert all(hit != new_id and size == 24 for answers in after.values() for hit, size in answers), after


def test_reads_are_answered_while_a_write_is_in_progress(two_workers):
    url, _ = two_workers
    files = [("files", (f"{i}.png", png(size=(600, 600), color=(i * 15, 20, 200)))) for i in range(16)]
    result, during = {}, []
    writing = threading.Event()

    def write():
        writing.set()
        result["r"] = httpx.post(f"{url}/v1/index/add", files=files, headers=KEY, timeout=300)

    writer = threading.Thread(target=write)
    writer.start()
    writing.wait()
    deadline = time.monotonic() + 120
    while writer.is_alive() and time.monotonic() < deadline and len(during) < 200:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/search", json={"text": "a red circle", "k": 3})
        if writer.is_alive():  # answered before the write returned
            during.append(r.status_code)
    writer.join(timeout=300)
    assert result["r"].status_code == 200 and result["r"].json()["added"] == 16, result["r"].text
    assert during and set(during) == {200}  # searches went on, and all succeeded, while the add ran
