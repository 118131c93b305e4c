"""The one source grammar and remote reads: fsspec URLs (HTTP, S3 on local servers), pipe:, faults."""

import shlex
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.data.collection import open_collection
from openeva.data.labelled import detect_format, load_classification_dataset
from openeva.data.sources import (
    RetryPolicy, expand_sources, is_local, is_transient, open_source, split_sources, with_retries,
)
from openeva.data.webdataset import TarShardDataset, shard_paths, write_shards
from openeva.serve.embed import embed, load_embeddings
from openeva.serve.index import Index
from openeva.train.config import DataConfig

FAST = RetryPolicy(retries=2, backoff=0.01)


def make_shards(tmp_path, n=12, shard_size=4, **extra):
    samples = [{"image": Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)), "txt": f"caption {i}", **extra}
               for i in range(n)]
    return write_shards(samples, tmp_path / "shards", shard_size=shard_size)


def captions(ds):
    return [s[1] for s in ds if s is not None]


# ------------------------------------------------------------------------------------------------ grammar
def test_grammar_braces_separators_and_escapes():
    assert expand_sources("a-{000..002}.tar;b-{x,y}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar", "b-x.tar",
                                                              "b-y.tar"]
    assert expand_sources("x-{a,{1..2}}.tar") == ["x-a.tar", "x-1.tar", "x-2.tar"]
    # fsspec chaining: "::" before a URL is part of the source
    assert expand_sources("simplecache::s3://b/s-{0..1}.tar") == ["simplecache::s3://b/s-0.tar",
                                                                   "simplecache::s3://b/s-1.tar"]
    # the older separator between plain paths still works, and "\:" keeps it literal
    assert expand_sources("a.tar::b.tar") == ["a.tar", "b.tar"]
    assert expand_sources(r"odd\::name.tar") == ["odd::name.tar"] and is_local("odd::name.tar")
    # ";" inside a URL or a pipe command is written "\;"; "\{" is a literal brace
    assert expand_sources(r"https://h/q\;v.tar; pipe:cat a-{0..1}.tar \; true") == [
        "https://h/q;v.tar", "pipe:cat a-0.tar ; true", "pipe:cat a-1.tar ; true"]
    assert expand_sources(r"lit\{1..2\}.tar") == ["lit{1..2}.tar"]
    # a pipe command keeps its "::" (the shell's business)
    assert expand_sources("pipe:echo a::b") == ["pipe:echo a::b"]
    # data.train splits on ';' only, keeping a pattern (and its escapes) as one source
    assert split_sources(r"s3://b/x-{0..9}.tar; /d/i.csv ;https://h/q\;v.tar") == [
        "s3://b/x-{0..9}.tar", "/d/i.csv", r"https://h/q\;v.tar"]
    assert DataConfig(train=r"a.tar;pipe:cat x \; true").sources() == ["a.tar", r"pipe:cat x \; true"]
    with pytest.raises(ValueError, match="empty brace range"):
        expand_sources("s-{5..1}.tar")


def test_transient_errors_are_retried_then_raised():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert with_retries(flaky, "flaky", FAST) == "ok" and len(calls) == 3
    assert not is_transient(FileNotFoundError("gone")) and is_transient(TimeoutError())
    with pytest.raises(FileNotFoundError):  # not transient: no retry
        with_retries(lambda: (calls.append(1), open("/no/such/file"))[1], "missing", FAST)


# ------------------------------------------------------------------------------------------------ pipe:
def test_pipe_sources_read_shards_and_fail_visibly(tmp_path):
    paths = make_shards(tmp_path)
    pattern = str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    # a ';' in the command is written '\;' (an unescaped one would separate sources)
    ds = TarShardDataset(f"pipe:{shlex.quote(sys.executable)} -c 'import sys,shutil\\; "
                         f"shutil.copyfileobj(open(sys.argv[1], \"rb\"), sys.stdout.buffer)' {pattern}")
    assert captions(ds) == captions(TarShardDataset(paths)) == [f"caption {i}" for i in range(12)]
    with open_source(r"pipe:printf 'a;b'") as f:
        assert f.read() == b"a;b"
    bad = TarShardDataset([str(paths[0]), "pipe:exit 3"], retry=FAST)
    assert captions(bad) == [f"caption {i}" for i in range(4)]
    assert bad.skipped["corrupt_shard"] == 1 and bad.failed_shards == ["pipe:exit 3"]


# ------------------------------------------------------------------------------------------------ HTTP
def test_http_shards_equal_disk_and_faults_are_retried_or_skipped(tmp_path, serve_http):
    paths = make_shards(tmp_path, n=16)  # 4 shards of 4
    on_disk = captions(TarShardDataset(paths))
    with serve_http(tmp_path / "shards") as (url, _):
        ds = TarShardDataset(f"{url}/shard-{{000000..000003}}.tar")
        assert captions(ds) == on_disk and not ds.skipped
    # shard 1 answers 500 twice (retried), shard 2 is cut mid-stream every time (skipped, counted, named)
    with serve_http(tmp_path / "shards", fail_first={"shard-000001.tar": 2},
                    truncate={"shard-000002.tar"}) as (url, handler):
        ds = TarShardDataset(f"{url}/shard-{{000000..000003}}.tar", retry=FAST)
        got = captions(ds)
        assert ds.failed_shards == [f"{url}/shard-000002.tar"] and ds.skipped["corrupt_shard"] == 1
        shard2 = set(on_disk[8:12])
        assert [c for c in got if c not in shard2] == on_disk[:8] + on_disk[12:]  # the run went on, in order
        assert len(got) == len(set(got))  # a resumed stream never repeats a sample
        assert handler.requests.count("/shard-000001.tar") == 3
        assert handler.requests.count("/shard-000002.tar") == FAST.retries + 1
    with serve_http(tmp_path / "shards") as (url, _):
        with pytest.raises(FileNotFoundError, match="not found"):
            shard_paths(f"{url}/shard-{{000000..000009}}.tar")


# ------------------------------------------------------------------------------------------------ S3
def test_s3_shards_train_eval_and_collection_equal_disk(tmp_path, s3):
    paths = make_shards(tmp_path, n=10, shard_size=4, cls=1)
    for p in paths:
        s3.upload_file(str(p), "shards", f"train/{p.name}")
    remote = TarShardDataset("s3://shards/train/shard-{000000..000002}.tar")
    assert captions(remote) == captions(TarShardDataset(paths))
    assert [str(s) for s in TarShardDataset("s3://shards/train/").shards] == [
        f"s3://shards/train/{p.name}" for p in paths]  # a folder (prefix) of shards
    assert detect_format("s3://shards/train/") == "wds"
    # embed / classify / serve read collections; eval reads labelled sets: same bytes as from disk
    coll, local = open_collection("s3://shards/train/"), open_collection(str(tmp_path / "shards"))
    assert len(coll) == len(local) == 10 and [coll.key(i) for i in range(10)] == [local.key(i) for i in range(10)]
    assert coll.load(3).tobytes() == local.load(3).tobytes()
    labelled = load_classification_dataset("s3://shards/train/shard-{000000..000002}.tar", classnames=["a", "b"])
    assert labelled.labels == [1] * 10 and labelled.images.load(9).size == (8, 8)
    s3.put_object(Bucket="shards", Key="index.csv", Body=b"filepath,label\n")  # indexes are read from URLs too
    with pytest.raises(ValueError, match="index.csv has no rows"):
        load_classification_dataset("s3://shards/index.csv", dataset_type="csv")
    s3.put_object(Bucket="shards", Key="mnist/train-images-idx3-ubyte", Body=b"")
    with pytest.raises(ValueError, match="local disk"):  # IDX and COCO are not
        load_classification_dataset("s3://shards/mnist/train-images-idx3-ubyte")


class MeanColour:
    """The smallest Encoder: a unit vector from an image's mean colour."""

    dim = 3
    info = {"model": "mean-colour", "dim": 3}

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((2, 2)), dtype=np.float32)).permute(2, 0, 1)  # (3, 2, 2)

    def encode_images(self, images):  # (B, 3, H, W) -> (B, 3)
        v = images.mean(dim=(2, 3)).numpy() + 1.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embed_from_http_shards_to_an_s3_url_resumes_and_indexes_from_a_local_copy(tmp_path, s3, serve_http,
                                                                                   monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the local mirror of the output URL
    make_shards(tmp_path, n=10)
    with serve_http(tmp_path / "shards") as (url, _):
        src = f"{url}/shard-{{000000..000002}}.tar"
        local = embed(str(tmp_path / "shards"), out=tmp_path / "local", encoder=MeanColour(), shard_size=4,
                      dtype="float32", progress=False)
        remote = embed(src, out="s3://shards/emb", encoder=MeanColour(), shard_size=4, dtype="float32",
                       progress=False)
        assert remote["status"] == local["status"] == "complete" and remote["count"] == 10
        names = {o["Key"] for o in s3.list_objects_v2(Bucket="shards", Prefix="emb/")["Contents"]}
        assert {"emb/manifest.json", "emb/shards/00002.done.json", "emb/shards/00002.npy"} <= names
        s3.delete_object(Bucket="shards", Key="emb/shards/00001.done.json")  # as if killed before shard 1 finished
        assert embed(src, out="s3://shards/emb", encoder=MeanColour(), shard_size=4, dtype="float32",
                     progress=False)["count"] == 10
    vectors, meta, _ = load_embeddings("s3://shards/emb")
    local_vectors, local_meta, _ = load_embeddings(tmp_path / "local")
    assert np.array_equal(vectors, local_vectors) and [m["id"] for m in meta] == [m["id"] for m in local_meta]
    index = Index.from_embeddings("s3://shards/emb")  # `openeva index build` on the URL: copied, then mapped
    assert len(index) == 10
