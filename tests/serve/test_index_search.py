"""`openeva index build/add`, `openeva search` (+ --grid), `openeva classify`, and the Index API."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from openeva.cli import main
from openeva.serve import Index, classify, embed
from openeva.serve.index import measure_recall


def _unit(n, d, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _meta(n, start=0):
    return [{"id": f"item{i}", "path": f"/x/{i}.png", "caption": None, "width": 1, "height": 1,
             "source": {"path": f"/x/{i}.png"}} for i in range(start, start + n)]


def test_exact_index_finds_each_vector_first_and_round_trips(tmp_path):
    vectors = _unit(200, 16)
    index = Index.build(vectors, _meta(200), {"model": "m", "dim": 16})
    assert index.kind == "flat" and index.manifest["recall@10"] == 1.0
    hits = index.search(vectors[:5], k=3)
    assert [h[0]["id"] for h in hits] == [f"item{i}" for i in range(5)]
    assert hits[0][0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[0][0]["score"] >= hits[0][1]["score"]
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    assert len(loaded) == 200 and loaded.search(vectors[7], k=1)[0][0]["id"] == "item7"


def test_approximate_index_records_measured_recall(tmp_path):
    vectors = _unit(3000, 16, seed=1)
    for kind in ("ivf", "hnsw"):
        index = Index.build(vectors, _meta(3000), kind=kind)
        recall = index.manifest["recall@10"]
        assert index.kind == kind and 0.5 < recall <= 1.0
        assert recall == pytest.approx(measure_recall(index.faiss_index, vectors), abs=1e-3)
    index.save(tmp_path / "ivf")
    assert json.loads((tmp_path / "ivf" / "v000001" / "manifest.json").read_text())["recall@10"] == recall


def test_approximate_search_is_tuned_to_the_target_recall():
    vectors = _unit(4000, 32, seed=3)  # random unit vectors: the hardest case for an IVF index
    fixed = Index.build(vectors, _meta(4000), kind="ivf", params={"nprobe": 1})
    assert fixed.manifest["params"]["nprobe"] == 1 and "target_recall" not in fixed.manifest
    tuned = Index.build(vectors, _meta(4000), kind="ivf", target_recall=0.95)
    p = tuned.manifest["params"]
    assert tuned.manifest["recall@10"] >= 0.95 > fixed.manifest["recall@10"]
    assert p["nprobe"] <= p["nlist"] and tuned.faiss_index.nprobe == p["nprobe"]
    if p["nprobe"] > 8:  # the smallest doubling that reaches the target: half of it did not
        half = Index.build(vectors, _meta(4000), kind="ivf", params={"nprobe": p["nprobe"] // 2})
        assert half.manifest["recall@10"] < 0.95
    hnsw = Index.build(vectors, _meta(4000), kind="hnsw", target_recall=0.99)
    assert hnsw.manifest["recall@10"] >= 0.99 or hnsw.manifest["params"]["ef_search"] == 4096
    with pytest.raises(ValueError, match="target_recall"):
        Index.build(vectors, _meta(4000), kind="ivf", target_recall=1.5)


def test_add_skips_known_ids_and_refuses_other_dimensions(tmp_path):
    index = Index.build(_unit(50, 8), _meta(50), {"model": "a", "dim": 8})
    assert index.add(_unit(60, 8, seed=2), _meta(60)) == 10 and len(index) == 60
    with pytest.raises(ValueError, match="dimension"):
        index.add(_unit(5, 12), _meta(5, start=100))
    with pytest.raises(ValueError, match="dimension 12"):
        index.check_compatible({"dim": 12, "model": "b"})


def test_a_crash_while_saving_leaves_the_previous_index(tmp_path, monkeypatch):
    index = Index.build(_unit(20, 8), _meta(20))
    index.save(tmp_path / "idx")
    index.add(_unit(5, 8, seed=3), _meta(5, start=20))
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("CURRENT"):
            raise OSError("simulated crash before the pointer moves")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        index.save(tmp_path / "idx")
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(Index.load(tmp_path / "idx")) == 20  # the old version is still the live one
    index.save(tmp_path / "idx")
    assert len(Index.load(tmp_path / "idx")) == 25
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["CURRENT", "v000003"]


def test_cli_build_add_search_grid_and_classify(clip_dir, other_clip_dir, make_folder, tmp_path, capsys):
    first = make_folder(tmp_path / "a", 10, bad=False)
    second = make_folder(tmp_path / "b", 6, seed=5, bad=True)
    for src, out in ((first, "ea"), (second, "eb")):
        # fp32: the random tiny model maps these images within ~0.005 cosine of each other, which bf16 rounding
        # (different for a batch of 8 and a single query) can reorder
        assert main(["embed", str(src), "--model", clip_dir, "--out", str(tmp_path / out), "--workers", "0",
                     "--no-progress", "--precision", "fp32"]) == 0
    idx = str(tmp_path / "idx")
    assert main(["index", "build", str(tmp_path / "ea"), "--out", idx]) == 0
    assert main(["index", "add", idx, str(tmp_path / "eb")]) == 0
    capsys.readouterr()
    assert main(["search", idx, "--text", "a red circle", "-k", "4", "--json", "--grid", str(tmp_path / "g.png")]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and hits[0]["score"] >= hits[-1]["score"]
    assert Image.open(tmp_path / "g.png").size[0] > 0
    query = sorted(first.rglob("*.png"))[3]
    assert main(["search", idx, "--image", str(query), "-k", "1", "--precision", "fp32"]) == 0
    assert query.name in capsys.readouterr().out  # an indexed image finds itself first
    assert main(["search", idx, "--image", str(tmp_path / "nope.png")]) == 2
    # an index made with another model refuses its queries, and its vectors
    assert main(["embed", str(first), "--model", other_clip_dir, "--out", str(tmp_path / "ec"), "--workers", "0",
                 "--no-progress"]) == 0
    assert main(["index", "add", idx, str(tmp_path / "ec")]) == 2
    assert "another model" in capsys.readouterr().err
    preds = tmp_path / "preds.csv"
    assert main(["classify", str(second), "--model", clip_dir, "--labels", "circle, square ,star", "-k", "2",
                 "--out", str(preds), "--workers", "0", "--no-progress"]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 6 and all(r["label"] in ("circle", "square", "star") for r in rows)
    top = json.loads(rows[0]["top_k"])
    assert len(top) == 2 and top[0][1] >= top[1][1] and 0 < sum(p for _, p in top) <= 1.0001
    assert "skipped" in capsys.readouterr().out


def test_python_api(clip_dir, shapes_dir, tmp_path):
    import openeva

    assert openeva.embed is embed and openeva.Index is Index and openeva.classify is classify
    openeva.embed(shapes_dir, clip_dir, tmp_path / "e", progress=False)
    index = openeva.Index.from_embeddings(tmp_path / "e")
    assert len(index) == 24
    result = openeva.classify(shapes_dir, clip_dir, labels=["red circle", "blue square"], progress=False)
    assert len(result["predictions"]) == 24 and len(result["skipped"]) == 2
    with pytest.raises(ValueError, match="exactly one"):
        openeva.classify(shapes_dir, clip_dir, progress=False)


def test_add_keeps_rows_whose_ids_clash_across_sources(tmp_path):
    """Two folders each with ``a.jpg``: relative ids clash, sources differ; both rows land and are found."""
    v = _unit(2, 8, seed=4)
    row = lambda folder: {"id": "a.jpg", "path": f"/{folder}/a.jpg", "caption": None, "width": 1, "height": 1,  # noqa: E731
                          "source": {"path": f"/{folder}/a.jpg"}}
    index = Index.build(v[:1], [row("one")], {"model": "m", "dim": 8})
    assert index.add(v[1:], [row("two")]) == 1 and len(index) == 2
    assert index.add(v[1:], [row("two")]) == 0  # the same item again is still skipped
    assert [h[0]["path"] for h in index.search(v, k=1)] == ["/one/a.jpg", "/two/a.jpg"]


def test_save_refuses_a_folder_that_is_not_an_index_and_removes_only_its_versions(tmp_path):
    index = Index.build(_unit(10, 8), _meta(10))
    user = tmp_path / "photos"
    user.mkdir()
    (user / "vacation").mkdir()  # a user's folder whose name starts with "v"
    (user / "vacation" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not an openeva index"):
        index.save(user)
    assert (user / "vacation" / "a.jpg").read_bytes() == b"x" and not (user / "CURRENT").exists()
    assert main(["index", "build", str(tmp_path / "no_embeddings"), "--out", str(user)]) == 2  # refused first
    assert sorted(p.name for p in user.iterdir()) == ["vacation"]
    idx = tmp_path / "idx"
    index.save(idx)
    (idx / "v2023").mkdir()  # not a version folder of ours (not v + 6 digits): left alone
    index.save(idx)
    assert sorted(p.name for p in idx.iterdir()) == ["CURRENT", "v000002", "v2023"]
