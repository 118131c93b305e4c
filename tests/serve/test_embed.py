"""`openeva embed` / `openeva.embed`: outputs, skipping of bad files, refusals, exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openeva.cli import main
from openeva.serve.embed import embed, load_embeddings

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_cli_embeds_a_folder_skipping_bad_files(clip_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", str(shapes_dir), "--model", clip_dir, "--out", str(out), "--text", "--shard-size", "10",
                 "--batch-size", "4", "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "corrupt.jpg" in printed and "truncated.png" in printed
    vectors, meta, manifest = load_embeddings(out)
    assert manifest["status"] == "complete" and manifest["count"] == 24 and vectors.shape == (24, 32)
    assert manifest["dtype"] == "float16" and np.load(out / "shards" / "00000.npy").dtype == np.float16
    assert {s["path"].rsplit("/", 1)[-1] for s in manifest["skipped"]} == {"corrupt.jpg", "truncated.png"}
    assert any("notes.md" in s for s in manifest["source_skipped"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)
    assert len({m["id"] for m in meta}) == 24
    assert all(m["width"] == 40 and m["height"] == 40 and m["caption"] for m in meta)
    text_vectors, _, _ = load_embeddings(out, text=True)
    assert text_vectors.shape == (24, 32) and np.allclose(np.linalg.norm(text_vectors, axis=1), 1, atol=1e-2)
    for key in ("model", "config_hash", "weights_hash", "preprocess", "dim", "normalized"):
        assert key in manifest


def test_an_elongated_image_is_skipped_before_decoding(clip_dir, tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 40), (200, 0, 0)).save(src / "square.png")
    Image.new("RGB", (6400, 10), (0, 0, 200)).save(src / "strip.png")  # 640:1, a few KB: 64 GB once resized
    manifest = embed(src, clip_dir, tmp_path / "emb", progress=False)
    assert manifest["count"] == 1
    [skipped] = manifest["skipped"]
    assert skipped["path"].endswith("strip.png") and "elongated" in skipped["error"]


def test_rerun_is_a_no_op_and_other_models_are_refused(clip_dir, other_clip_dir, shapes_dir, tmp_path):
    out = tmp_path / "emb"
    first = embed(shapes_dir, clip_dir, out, shard_size=8, progress=False)
    mtime = (out / "shards" / "00000.npy").stat().st_mtime_ns
    again = embed(shapes_dir, clip_dir, out, shard_size=8, progress=False)
    assert again["count"] == first["count"] and (out / "shards" / "00000.npy").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="other settings"):
        embed(shapes_dir, other_clip_dir, out, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        embed(shapes_dir, clip_dir, out, shard_size=8, dtype="float32", progress=False)
    assert main(["embed", str(shapes_dir), "--model", other_clip_dir, "--out", str(out), "--shard-size", "8",
                 "--no-progress"]) == 2


def test_resuming_with_auto_precision_keeps_the_runs_precision(clip_dir, shapes_dir, tmp_path, capsys):
    """A run begun on a machine where "auto" meant another precision resumes here in that precision (not
    refused, and not mixed); an explicit other precision is still refused."""
    from openeva.runtime import resolve_precision

    here = resolve_precision("auto", "cpu")[0]
    began = "fp32" if here == "bf16" else "bf16"  # what "auto" would have chosen on the other CPU class
    out = tmp_path / "emb"
    args = ["embed", str(shapes_dir), "--model", clip_dir, "--out", str(out), "--shard-size", "8",
            "--workers", "0", "--no-progress"]
    assert main(args + ["--precision", began]) == 0
    first, _, manifest = load_embeddings(out)
    assert manifest["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[began]
    capsys.readouterr()
    assert main(args) == 0  # --precision auto
    assert f"precision {began}, as the run began" in capsys.readouterr().err
    again, _, _ = load_embeddings(out)
    assert np.array_equal(first, again)
    assert main(args + ["--precision", here]) == 2
    assert "other settings" in capsys.readouterr().err
    assert embed(shapes_dir, clip_dir, out, progress=False, shard_size=8)["count"] == manifest["count"]


def test_bad_sources_give_clear_errors(clip_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", str(empty), "--model", clip_dir, "--out", str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "missing"), "--model", clip_dir, "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("picture,caption\na.png,hello\n")
    assert main(["embed", str(csv_file), "--model", clip_dir, "--out", str(tmp_path / "o3"), "--image-key",
                 "filepath"]) == 2
    assert "'filepath' not found" in capsys.readouterr().err


def test_the_python_api_expands_home_paths(clip_dir, shapes_dir, tmp_path, monkeypatch):
    """The README's `openeva.embed("~/Pictures", ...)`: no shell expands the ~ there."""
    import shutil

    import openeva

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(shapes_dir, tmp_path / "Pictures")
    manifest = openeva.embed("~/Pictures", clip_dir, "~/pics_emb", progress=False)
    assert manifest["count"] == 24 and (tmp_path / "pics_emb" / "manifest.json").is_file()
    openeva.Index.from_embeddings("~/pics_emb").save("~/pics_index")
    assert len(openeva.Index.load("~/pics_index")) == 24
    preds = openeva.classify("~/Pictures", clip_dir, labels="red,blue", out="~/preds.csv", progress=False)
    assert len(preds["predictions"]) == 24 and (tmp_path / "preds.csv").is_file()


def test_csv_and_webdataset_sources(clip_dir, make_folder, make_shards, tmp_path):
    folder = make_folder(tmp_path / "imgs", 6, bad=False)
    rows = [{"image": str(p.relative_to(folder)), "text": f"caption {i}"} for i, p in
            enumerate(sorted(folder.rglob("*.png")))]
    index = folder / "list.jsonl"
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, meta, manifest = load_embeddings(tmp_path / "e1") if embed(index, clip_dir, tmp_path / "e1", progress=False) \
        else (None, None, None)
    assert manifest["count"] == 6 and meta[0]["caption"] == "caption 0"
    shards = make_shards(tmp_path / "wds", 10, per_shard=4)
    result = embed(str(shards / "shard-{000..002}.tar"), clip_dir, tmp_path / "e2", progress=False, workers=1)
    _, meta, _ = load_embeddings(tmp_path / "e2")
    assert result["count"] == 10 and meta[0]["path"].endswith("shard-000.tar/00000") and meta[0]["caption"]


def test_ranks_split_the_work_without_overlap(clip_dir, shapes_dir, tmp_path):
    single = embed(shapes_dir, clip_dir, tmp_path / "one", shard_size=5, progress=False)
    assert embed(shapes_dir, clip_dir, tmp_path / "two", shard_size=5, rank=1, world_size=2,
                 progress=False)["status"] == "partial"
    done = embed(shapes_dir, clip_dir, tmp_path / "two", shard_size=5, rank=0, world_size=2, progress=False)
    assert done["status"] == "complete" and done["count"] == single["count"]
    a, meta_a, _ = load_embeddings(tmp_path / "one")
    b, meta_b, _ = load_embeddings(tmp_path / "two")
    assert [m["id"] for m in meta_a] == [m["id"] for m in meta_b] and np.array_equal(a, b)


def _embed_cmd(src, model, out) -> list[str]:
    return [sys.executable, "-m", "openeva", "embed", str(src), "--model", model, "--out", str(out),
            "--shard-size", "10", "--batch-size", "5", "--workers", "0", "--no-progress", "--dtype", "float32"]


def test_resume_after_kill_9_gives_the_same_vectors(clip_dir, make_folder, tmp_path):
    src = make_folder(tmp_path / "many", 150, size=96, bad=False)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "killed"
    proc = subprocess.Popen(_embed_cmd(src, clip_dir, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list((out / "shards").glob("*.done.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    finished = len(list((out / "shards").glob("*.done.json")))
    assert 2 <= finished < 15, "the run must be killed part-way for this test to mean anything"
    # a kill during a shard's write leaves its temporary file behind (the kill above may or may not hit one)
    (out / "shards" / ".00014.npy.tmp-99999").write_bytes(b"half a shard")
    subprocess.run(_embed_cmd(src, clip_dir, out), env=env, check=True, timeout=300, capture_output=True)
    clean = embed(src, clip_dir, tmp_path / "clean", shard_size=10, batch_size=5, dtype="float32", progress=False)
    resumed, meta_r, manifest = load_embeddings(out)
    expected, meta_c, _ = load_embeddings(tmp_path / "clean")
    ids = [m["id"] for m in meta_r]
    assert manifest["count"] == clean["count"] == 150 and len(set(ids)) == len(ids) == 150
    assert ids == [m["id"] for m in meta_c]
    assert np.array_equal(resumed, expected)
    assert not list((out / "shards").glob(".*.tmp-*")), "the resumed run removes half-written files"


# ------------------------------------------------------------------------------------------------ remote shards
def _served_shards(tmp_path, make_shards, n: int = 23, per_shard: int = 5):
    """``n`` captioned JPEGs in shards of ``per_shard`` (the last one short), so that output shards straddle
    input shards; returns the folder."""
    return make_shards(tmp_path / "wds", n, per_shard=per_shard)


def _same(a, b) -> None:
    va, ma, fa = load_embeddings(a)
    vb, mb, fb = load_embeddings(b)
    assert fa["count"] == fb["count"] and fa["total"] == fb["total"] and fa["num_shards"] == fb["num_shards"]
    assert [m["id"] for m in ma] == [m["id"] for m in mb] and [m["caption"] for m in ma] == [m["caption"] for m in mb]
    assert np.array_equal(va, vb)


def test_remote_shards_are_streamed_once_and_equal_disk(clip_dir, make_shards, tmp_path, monkeypatch):
    """From HTTP, S3 and ``pipe:``: each input shard is fetched exactly once (no index pass), the output equals
    the disk run's (same item numbering, batches, vectors, captions), and no download is left behind."""
    from remote_servers import http_server, s3_server

    folder = _served_shards(tmp_path, make_shards)
    opts = {"shard_size": 7, "batch_size": 3, "dtype": "float32", "progress": False}
    disk = embed(str(folder / "shard-{000..004}.tar"), clip_dir, tmp_path / "disk", **opts)
    assert disk["count"] == 23
    with http_server(folder) as (url, handler):
        remote = embed(f"{url}/shard-{{000..004}}.tar", clip_dir, tmp_path / "http", workers=1, **opts)
        gets = [r for r in handler.requests if r.endswith(".tar")]
    assert sorted(gets) == [f"/shard-{i:03d}.tar" for i in range(5)], "each shard downloaded exactly once"
    assert remote["status"] == "complete" and remote["count"] == 23 and remote["total"] == 23
    _same(tmp_path / "disk", tmp_path / "http")
    meta = load_embeddings(tmp_path / "http")[1]
    assert meta[0]["path"] == f"{url}/shard-000.tar/00000" and meta[0]["source"]["tar"] == f"{url}/shard-000.tar"
    ledger = json.loads((tmp_path / "http" / "inputs.json").read_text())["shards"]
    assert [e["count"] for e in ledger] == [5, 5, 5, 5, 3]
    assert not list((tmp_path / "http").glob(".download-*")), "downloads are deleted"
    embed(f"pipe:cat {folder}/shard-{{000..004}}.tar", clip_dir, tmp_path / "pipe", **opts)
    _same(tmp_path / "disk", tmp_path / "pipe")
    with s3_server(monkeypatch) as s3:
        for p in sorted(folder.glob("*.tar")):
            s3.upload_file(str(p), "shards", f"wds/{p.name}")
        embed("s3://shards/wds/", clip_dir, tmp_path / "s3", workers=1, **opts)  # a prefix of shards
    _same(tmp_path / "disk", tmp_path / "s3")


def test_remote_resume_reads_only_the_shards_of_unfinished_outputs(clip_dir, make_shards, tmp_path):
    """A rerun downloads only the input shards holding items of unfinished output shards (counts come from
    the ledger), gives the same vectors, splits over ranks without overlap, and refuses a changed shard."""
    import shutil

    from remote_servers import http_server

    folder = _served_shards(tmp_path, make_shards)
    opts = {"shard_size": 7, "batch_size": 3, "dtype": "float32", "progress": False}
    out = tmp_path / "http"
    with http_server(folder) as (url, handler):
        src = f"{url}/shard-{{000..004}}.tar"
        embed(src, clip_dir, out, **opts)
        for s in (1, 3):  # as if killed before these finished: items 7-13 (shards 1, 2) and 21-22 (shard 4)
            (out / "shards" / f"{s:05d}.done.json").unlink()
        reference = tmp_path / "reference"
        shutil.copytree(folder, tmp_path / "copy")
        del handler.requests[:]
        assert embed(src, clip_dir, out, **opts)["status"] == "complete"
        assert sorted(r for r in handler.requests if r.endswith(".tar")) == [
            "/shard-001.tar", "/shard-002.tar", "/shard-004.tar"]
        two = tmp_path / "two"  # 2 ranks: each counts what it must, embeds only its output shards
        assert embed(src, clip_dir, two, rank=1, world_size=2, **opts)["status"] == "partial"
        assert sorted(p.name for p in (two / "shards").glob("*.done.json")) == ["00001.done.json",
                                                                              "00003.done.json"]
        assert embed(src, clip_dir, two, rank=0, world_size=2, **opts)["status"] == "complete"
        (out / "shards" / "00002.done.json").unlink()
        make_shards(tmp_path / "other", 23, per_shard=4)  # shard-002.tar now holds other items
        shutil.copy(tmp_path / "other" / "shard-002.tar", folder / "shard-002.tar")
        with pytest.raises(ValueError, match="shard-002.tar changed"):
            embed(src, clip_dir, out, **opts)
    embed(str(tmp_path / "copy" / "shard-{000..004}.tar"), clip_dir, reference, **opts)
    for other in (out, two):
        vectors = load_embeddings(other)[0]
        assert np.array_equal(vectors, load_embeddings(reference)[0])


def test_remote_resume_after_kill_9_gives_the_same_vectors(clip_dir, make_shards, tmp_path):
    """``openeva embed`` from HTTP shards, killed part-way (kill -9), rerun: the same vectors as one clean run
    over the same shards on disk, and the killed run's downloads are gone."""
    from remote_servers import http_server

    folder = make_shards(tmp_path / "wds", 150, per_shard=7, size=96)  # 22 input shards, 15 output shards
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "killed"
    with http_server(folder) as (url, _):
        src = f"{url}/shard-{{000..021}}.tar"
        proc = subprocess.Popen(_embed_cmd(src, clip_dir, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while len(list((out / "shards").glob("*.done.json"))) < 2 and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        finished = len(list((out / "shards").glob("*.done.json")))
        assert 2 <= finished < 15, "the run must be killed part-way for this test to mean anything"
        subprocess.run(_embed_cmd(src, clip_dir, out), env=env, check=True, timeout=300, capture_output=True)
    clean = embed(str(folder / "shard-{000..021}.tar"), clip_dir, tmp_path / "clean", shard_size=10, batch_size=5,
                  dtype="float32", progress=False)
    resumed, meta_r, manifest = load_embeddings(out)
    expected, meta_c, _ = load_embeddings(tmp_path / "clean")
    assert manifest["count"] == clean["count"] == 150
    assert [m["id"] for m in meta_r] == [m["id"] for m in meta_c] and np.array_equal(resumed, expected)
    assert not list(out.glob(".download-*")) and not list((out / "shards").glob(".*.tmp-*"))
