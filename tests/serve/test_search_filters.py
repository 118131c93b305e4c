"""Filters, score threshold, the bound on k, and delete by id over HTTP, against a real uvicorn on 127.0.0.1."""

from __future__ import annotations


import pytest

pytest.importorskip("fastapi")
from running_server import RunningServer, png

from openeva.data.synthetic import ShapesDataset
from openeva.serve.app import create_app
from openeva.serve.encoder import TorchClipEncoder
from openeva.serve.limits import Limits


@pytest.fixture(scope="module")
def server(clip_dir, build_index, tmp_path_factory):
    """An index of 8 images of 40x40 under photos/ and 8 of 64x48 under photos/big/."""
    root = tmp_path_factory.mktemp("filters")
    photos = root / "photos"
    (photos / "big").mkdir(parents=True)
    ds = ShapesDataset(16, image_size=40, seed=5, split="all")
    for i in range(16):
        image, _, _ = ds.render(i)
        if i % 2:
            image.resize((64, 48)).save(photos / "big" / f"{i:02d}.png")
        else:
            image.save(photos / f"{i:02d}.png")
    encoder = TorchClipEncoder(clip_dir)
    index = build_index(photos, root, encoder)
    s = RunningServer(create_app(encoder=encoder, index_path=index, api_key="k", limits=Limits(max_k=20)))
    s.photos = photos
    yield s
    s.stop()


def search(s, **body):
    r = s.client.post("/v1/search", json={"text": "a red circle", "k": 20, **body})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_filters_select_rows_by_path_and_size(server):
    every = search(server)
    assert len(every) == 16
    big = search(server, filter={"path_prefix": str(server.photos / "big")})
    assert len(big) == 8 and all((h["width"], h["height"]) == (64, 48) for h in big)
    by_glob = search(server, filter={"path_glob": "*/big/*.png"})
    assert {h["id"] for h in by_glob} == {h["id"] for h in big}
    small = search(server, filter={"width": [None, 50]})
    assert len(small) == 8 and all(h["width"] == 40 for h in small)
    assert search(server, filter={"width": [41, None], "height": [48, 48]}) == big
    assert search(server, filter={"height": [100, None]}) == []
    # the ranking within a filter is the unfiltered ranking restricted to it
    assert [h["id"] for h in big] == [h["id"] for h in every if h["width"] == 64]
    image = server.client.post("/v1/search/image", files={"file": ("q.png", png(color=(250, 10, 10)))},
                               data={"k": "20", "min_width": "50"})
    assert image.status_code == 200 and {h["width"] for h in image.json()["results"]} == {64}
    bad = server.client.post("/v1/search", json={"text": "a", "filter": {"width": [10]}})
    assert bad.status_code == 422 and bad.json()["error"]["param"].startswith("filter")
    unknown = server.client.post("/v1/search", json={"text": "a", "filter": {"colour": "red"}})
    assert unknown.status_code == 422


def test_threshold_drops_hits_below_it_and_k_is_bounded(server):
    every = search(server)
    cut = every[5]["score"]
    kept = search(server, threshold=cut)
    assert kept == [h for h in every if h["score"] >= cut] and len(kept) >= 6
    assert search(server, threshold=1.0) == [] or all(h["score"] >= 1.0 for h in search(server, threshold=1.0))
    r = server.client.post("/v1/search", json={"text": "a", "k": 21})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_k" and "20" in r.json()["error"]["message"]
    r = server.client.post("/v1/search", json={"text": "a", "threshold": 1.5})
    assert r.status_code == 422 and r.json()["error"]["param"] == "threshold"


def test_fold_duplicates_folds_near_copies_into_the_best_hit(server):
    plain = search(server)
    assert all(h["duplicate_count"] is None for h in plain)
    folded = search(server, fold_duplicates=-1.0)  # every pair is "near" at cosine -1: one hit keeps them all
    assert len(folded) == 1 and folded[0]["id"] == plain[0]["id"] and folded[0]["duplicate_count"] == 15
    r = server.client.post("/v1/search", json={"text": "a", "fold_duplicates": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "fold_duplicates"


def test_delete_by_id_needs_the_key_and_the_row_is_gone_from_the_next_search(server):
    every = search(server)
    victim = every[0]["id"]
    url = "/v1/index/items"
    assert server.client.request("DELETE", url, params={"id": victim}).status_code == 401
    assert server.client.request("DELETE", url, params={"id": victim}, headers={"x-api-key": "no"}).status_code == 401
    assert server.client.request("DELETE", url, headers={"x-api-key": "k"}).status_code == 422  # no id
    r = server.client.request("DELETE", url, params={"id": [victim, "not-an-id"]}, headers={"x-api-key": "k"})
    assert r.status_code == 200 and r.json() == {"deleted": 1, "index_size": 15}
    after = search(server)
    assert victim not in {h["id"] for h in after} and [h["id"] for h in after] == [h["id"] for h in every[1:]]
    again = server.client.request("DELETE", url, params={"id": victim}, headers={"x-api-key": "k"})
    assert again.json()["deleted"] == 0
