"""The web page at / in a real headless Chromium (Debian's `chromium`, driven by playwright's Python package)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; "
                                                         ".ci/run installs it)")


def test_page_searches_and_shows_a_grid(encoder_and_index, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    from openeva.serve.app import create_app

    sys.path.insert(0, str(Path(__file__).parent))
    from test_service import (
        RunningServer,  # the same real-uvicorn helper as the service tests
    )

    encoder, index_path, query_image = encoder_and_index
    server = RunningServer(create_app(encoder=encoder, index_path=index_path))
    shot = Path(__file__).resolve().parents[2] / "tests" / "serve" / "_artifacts"
    shot.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            page.wait_for_selector("#status:has-text('images indexed')", timeout=30_000)
            page.fill("#query", "a red circle")
            page.fill("#k", "8")
            page.click("#search-button")
            page.wait_for_selector(".grid .result", timeout=30_000)
            cards = page.locator(".grid .result")
            assert cards.count() == 8
            scores = [float(cards.nth(i).get_attribute("data-score")) for i in range(8)]
            assert scores == sorted(scores, reverse=True)
            ids = {cards.nth(i).get_attribute("data-id") for i in range(8)}
            assert len(ids) == 8
            page.wait_for_function("Array.from(document.querySelectorAll('.grid img')).every("
                                   "i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            assert "8 results" in page.inner_text("#message")
            page.screenshot(path=str(shot / "page_text_search.png"), full_page=True)
            # search by image: an indexed image finds itself first
            page.set_input_files("#image", str(query_image))
            page.select_option("#mode", "search")
            page.click("#image-button")
            page.wait_for_function(f"document.querySelector('.grid .result')?.dataset.id === '{query_image.name}'",
                                   timeout=30_000)
            # classify it against typed labels
            page.select_option("#mode", "classify")
            page.fill("#labels", "circle, square, star")
            page.click("#image-button")
            page.wait_for_selector("#labels-result li.label", timeout=30_000)
            assert page.locator("#labels-result li.label").count() == 3
            page.screenshot(path=str(shot / "page_classify.png"), full_page=True)
            # an error is shown, not thrown
            page.fill("#labels", " , ")
            page.click("#image-button")
            page.wait_for_selector("#message.error", timeout=30_000)
            assert "422" in page.inner_text("#message")
            assert not errors, errors
            browser.close()
    finally:
        server.stop()
    assert (shot / "page_text_search.png").stat().st_size > 10_000


@pytest.fixture
def encoder_and_index(clip_dir, make_folder, tmp_path):
    from openeva.serve import Index, embed
    from openeva.serve.encoder import TorchClipEncoder

    encoder = TorchClipEncoder(clip_dir)
    folder = make_folder(tmp_path / "photos", 16, size=96, bad=False)
    embed(folder, out=tmp_path / "emb", encoder=encoder, progress=False)
    Index.from_embeddings(tmp_path / "emb").save(tmp_path / "index")
    return encoder, tmp_path / "index", sorted(folder.glob("*.png"))[2]
