"""`openeva index build/add/delete/compact/info`, `openeva search` (filters, threshold, --grid), `openeva classify`,
and the Index API over real `openeva embed` folders."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from openeva.cli import main
from openeva.serve import Index, classify, embed


def test_cli_build_add_search_grid_and_classify(clip_dir, other_clip_dir, make_folder, tmp_path, capsys):
    first = make_folder(tmp_path / "a", 10, bad=False)
    second = make_folder(tmp_path / "b", 6, seed=5, bad=True)
    for src, out in ((first, "ea"), (second, "eb")):
        # fp32: the random tiny model maps these images within ~0.005 cosine of each other, which bf16 rounding
        # (different for a batch of 8 and a single query) can reorder
        assert main(["embed", str(src), "--model", clip_dir, "--out", str(tmp_path / out), "--workers", "0",
                     "--no-progress", "--precision", "fp32"]) == 0
    idx = str(tmp_path / "idx")
    capsys.readouterr()
    assert main(["index", "build", str(tmp_path / "ea"), "--out", idx]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "flat"
    assert main(["index", "add", idx, str(tmp_path / "eb")]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 6
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


def test_cli_filters_threshold_delete_compact_info_and_bad_input(clip_dir, make_folder, tmp_path, capsys):
    src = make_folder(tmp_path / "photos", 12, bad=False)  # half the images in photos/sub/
    assert main(["embed", str(src), "--model", clip_dir, "--out", str(tmp_path / "e"), "--workers", "0",
                 "--no-progress", "--precision", "fp32"]) == 0
    idx = str(tmp_path / "idx")
    capsys.readouterr()
    assert main(["index", "build", str(tmp_path / "e"), "--out", idx, "--kind", "flat"]) == 0
    capsys.readouterr()

    def search(*extra) -> list[dict]:
        assert main(["search", idx, "--text", "a shape", "-k", "20", "--json", "--precision", "fp32", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    everything = search()
    assert len(everything) == 12
    sub = search("--filter", "path=*/sub/*")
    assert len(sub) == 6 and all("/sub/" in h["path"] for h in sub)
    prefix = str(src / "sub")
    assert {h["id"] for h in search("--filter", f"path={prefix}")} == {h["id"] for h in sub}
    assert search("--min-width", "41") == [] and len(search("--filter", "width<=40", "--max-height", "40")) == 12
    cut = everything[5]["score"]
    assert [h["id"] for h in search("--threshold", str(cut))] == [h["id"] for h in everything[:6]]
    folded = search("--fold-duplicates", "-1")  # at cosine -1 every hit is a near-duplicate of the first
    assert len(folded) == 1 and folded[0]["id"] == everything[0]["id"] and folded[0]["duplicate_count"] == 11
    # delete by id: gone from the next search; compaction keeps the rest
    gone = everything[0]["id"]
    assert main(["index", "delete", idx, gone, "no-such-id"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == 1
    assert gone not in {h["id"] for h in search()}
    assert main(["index", "compact", idx]) == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 1
    assert main(["index", "info", idx]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 11 and info["kind"] == "flat" and info["recall@10"] == 1.0 and info["kind_reason"]
    # the index is whole without its embedding folder
    shutil.rmtree(tmp_path / "e")
    assert len(search()) == 11
    # bad input: one line each, exit code 2
    for argv, message in [
        (["search", idx, "--text", "x", "--filter", "width>=wide"], "needs an integer"),
        (["search", idx, "--text", "x", "--where", "camera"], "COLUMN=VALUE"),
        (["search", idx, "--text", "x", "-k", "5000"], "k must be"),
        (["search", idx, "--text", "x", "--fold-duplicates", "3"], "cosine similarity in [-1, 1]"),
        (["search", str(tmp_path / "none"), "--text", "x"], "does not exist"),
        (["index", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "i2")], "does not exist"),
        (["index", "build", str(tmp_path / "e2"), "--out", str(src)], "not an openeva index"),
        (["index", "build", str(tmp_path / "x"), "--out", str(tmp_path / "i3"), "--max-memory", "lots"],
         "bad memory size"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    (tmp_path / "idx" / "segments" / info["segments"][0]["name"] / "ann.faiss").write_bytes(b"garbage")
    assert main(["index", "info", idx]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_an_embedding_folder_of_another_dimension_is_refused(clip_dir, shapes_dir, tmp_path):
    embed(shapes_dir, clip_dir, tmp_path / "e", progress=False)
    index = Index.build(tmp_path / "e", tmp_path / "idx")
    v = np.ones((1, index.dim + 4), np.float32)
    with pytest.raises(ValueError, match="dimension"):
        index.add(v / np.linalg.norm(v), [{"id": "x", "path": "x"}])
    with pytest.raises(ValueError, match="dimension"):
        index.check_compatible({"dim": index.dim + 4})


def test_python_api(clip_dir, shapes_dir, tmp_path):
    import openeva

    assert openeva.embed is embed and openeva.Index is Index and openeva.classify is classify
    openeva.embed(shapes_dir, clip_dir, tmp_path / "e", progress=False)
    index = openeva.Index.from_embeddings(tmp_path / "e")
    assert len(index) == 24
    index.save(tmp_path / "saved")
    assert len(openeva.Index.load(tmp_path / "saved")) == 24 and index.root == tmp_path / "saved"
    result = openeva.classify(shapes_dir, clip_dir, labels=["red circle", "blue square"], progress=False)
    assert len(result["predictions"]) == 24 and len(result["skipped"]) == 2
    with pytest.raises(ValueError, match="exactly one"):
        openeva.classify(shapes_dir, clip_dir, progress=False)


def test_save_refuses_a_folder_that_is_not_an_index_and_removes_only_its_own_files(tmp_path):
    v = np.eye(8, dtype=np.float32)
    meta = [{"id": f"i{i}", "path": f"/x/{i}", "source": {"path": f"/x/{i}"}} for i in range(8)]
    index = Index.build(v, meta)
    user = tmp_path / "photos"
    user.mkdir()
    (user / "vacation").mkdir()  # a user's folder whose name starts with "v"
    (user / "vacation" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not an openeva index"):
        index.save(user)
    assert (user / "vacation" / "a.jpg").read_bytes() == b"x" and not (user / "CURRENT").exists()
    idx = tmp_path / "idx"
    index.save(idx)
    (idx / "v2023").mkdir()  # not a version folder of ours (not v + 6 digits): left alone
    index.add(np.ones((1, 8), np.float32) / np.sqrt(8), [{"id": "new", "path": "/x/new"}])
    index.add(np.full((1, 8), -1, np.float32) / np.sqrt(8), [{"id": "new2", "path": "/x/new2"}])
    assert (idx / "v2023").is_dir() and len(Index.open(idx)) == 10
    assert sorted(p.name for p in idx.iterdir() if p.name.startswith("v0")) == ["v000003", "v000004"]


def test_columns_of_a_csv_source_are_searchable_with_where(clip_dir, make_folder, tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", 6, bad=False)
    pngs = sorted(folder.rglob("*.png"))
    with (folder / "list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "camera", "year"])
        for i, p in enumerate(pngs):
            w.writerow([str(p.relative_to(folder)), f"caption {i}", ["X100", "A7"][i % 2], 2020 + i])
    assert main(["embed", str(folder / "list.csv"), "--model", clip_dir, "--out", str(tmp_path / "e"), "--workers",
                 "0", "--no-progress", "--precision", "fp32"]) == 0
    assert main(["index", "build", str(tmp_path / "e"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "--text", "a shape", "-k", "10", "--json", "--precision", "fp32",
                 "--where", "camera=A7"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {h["camera"] for h in hits} == {"A7"}
    index = Index.open(tmp_path / "idx")
    v = index.vectors([0])
    assert [h["year"] for h in index.search(v.astype(np.float32), k=5, filter="year=2023")[0]] == ["2023"]
