"""Image folders, class folders and CSV/JSONL caption indexes read from URLs (local S3 and HTTP servers), equal to
the same files on disk: training datasets, embed's collections and eval's labelled sets read them alike."""

import json

import numpy as np
import pytest
from PIL import Image

from openeva.data.captions import CaptionDataset, ImageTextFolder
from openeva.data.collection import open_collection
from openeva.data.labelled import detect_format, load_classification_dataset, load_retrieval_dataset
from openeva.data.sources import list_files, source_exists, source_kind

COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255)}


def make_tree(root):
    """classes/<colour>/<i>.png; pairs/images/<i>.png + pairs/captions.csv (+ .jsonl) with relative paths;
    pairs/folder/<i>.png with <i>.txt captions."""
    rows = []
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(2):
            image = Image.new("RGB", (12, 10), tuple(max(0, c - 40 * j) for c in rgb))
            (root / "classes" / name).mkdir(parents=True, exist_ok=True)
            image.save(root / "classes" / name / f"{j}.png")
            i = 2 * k + j
            (root / "pairs" / "images").mkdir(parents=True, exist_ok=True)
            image.save(root / "pairs" / "images" / f"{i}.png")
            (root / "pairs" / "folder").mkdir(parents=True, exist_ok=True)
            image.save(root / "pairs" / "folder" / f"{i}.png")
            (root / "pairs" / "folder" / f"{i}.txt").write_text(f"a {name} picture {j}")
            rows.append((f"images/{i}.png", f"a {name} picture {j}"))
    rows.append(("images/missing.png", "a picture that is not there"))  # skipped when read, never fatal
    (root / "pairs" / "captions.csv").write_text("filepath,title\n" + "".join(f"{p},{t}\n" for p, t in rows))
    (root / "pairs" / "captions.jsonl").write_text("".join(json.dumps({"image": p, "caption": t}) + "\n"
                                                           for p, t in rows))
    return sorted(p for p in root.rglob("*") if p.is_file())


def upload(s3, root, files, prefix="data"):
    for f in files:
        s3.upload_file(str(f), "shards", f"{prefix}/{f.relative_to(root).as_posix()}")
    return f"s3://shards/{prefix}"


def pixels(sample):
    image, text = sample
    return np.asarray(image).tobytes(), text


def items(ds):
    return [None if ds[i] is None else pixels(ds[i]) for i in range(len(ds))]


def test_s3_folders_and_indexes_equal_disk(tmp_path, s3):
    files = make_tree(tmp_path)
    url = upload(s3, tmp_path, files)
    assert source_kind(f"{url}/classes/") == source_kind(f"{url}/classes") == "dir"
    assert source_kind(f"{url}/pairs/captions.csv") == "file" and source_kind(f"{url}/nothing.csv") is None
    assert source_exists(f"{url}/pairs") and not source_exists(f"{url}/nowhere/")
    assert list_files(f"{url}/pairs/folder/", ".txt") == [f"{url}/pairs/folder/{i}.txt" for i in range(6)]
    # eval: a class folder in a bucket, labelled by its sub-folders' names
    assert detect_format(f"{url}/classes/") == "folder" and detect_format(f"{url}/pairs/captions.csv") == "csv"
    remote = load_classification_dataset(f"{url}/classes/", classnames=["blue", "green", "red"])
    local = load_classification_dataset(tmp_path / "classes", classnames=["blue", "green", "red"])
    assert remote.labels == local.labels == [0, 0, 1, 1, 2, 2] and remote.name == "classes"
    assert [remote.images.load(i).tobytes() for i in range(6)] == [local.images.load(i).tobytes() for i in range(6)]
    # retrieval from a caption index in a bucket: relative image paths resolve against the index's URL
    ret = load_retrieval_dataset(f"{url}/pairs/captions.csv")
    assert ret.images.ids[0] == f"{url}/pairs/images/0.png"
    assert ret.captions == load_retrieval_dataset(tmp_path / "pairs" / "captions.csv").captions
    # training: caption index (CSV and JSONL) and image-text folder, sample for sample as on disk
    for name, kwargs in (("captions.csv", {}), ("captions.jsonl", {"image_key": "image", "caption_key": "caption"})):
        ds = CaptionDataset(f"{url}/pairs/{name}", **kwargs)
        got = items(ds)
        assert got == items(CaptionDataset(tmp_path / "pairs" / name, **kwargs))
        assert got[6] is None and ds.skipped["missing_file"] == 1  # the listed image that is not there
    folder = ImageTextFolder(f"{url}/pairs/folder/")
    assert items(folder) == items(ImageTextFolder(tmp_path / "pairs" / "folder"))
    assert folder[0][1] == "a red picture 0"
    # embed / classify / serve: collections of a folder and of an index in a bucket
    for remote_src, local_src in ((f"{url}/pairs/folder/", tmp_path / "pairs" / "folder"),
                                  (f"{url}/pairs/captions.csv", tmp_path / "pairs" / "captions.csv")):
        coll, disk = open_collection(remote_src), open_collection(str(local_src))
        assert [coll.key(i) for i in range(len(coll))] == [disk.key(i) for i in range(len(disk))]
        assert [coll.caption(i) for i in range(len(coll))] == [disk.caption(i) for i in range(len(disk))]
        assert coll.load(3).tobytes() == disk.load(3).tobytes()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classification_dataset(f"{url}/no-such-folder/")
    with pytest.raises(ValueError, match="local disk"):
        load_classification_dataset(f"{url}/pairs/captions.csv", dataset_type="idx")


def test_http_index_reads_relative_images_and_a_folder_says_it_cannot_be_listed(tmp_path, serve_http):
    make_tree(tmp_path)
    with serve_http(tmp_path) as (url, _):
        ds = CaptionDataset(f"{url}/pairs/captions.csv")
        assert items(ds) == items(CaptionDataset(tmp_path / "pairs" / "captions.csv"))
        assert ds.skipped["missing_file"] == 1
        coll = open_collection(f"{url}/pairs/captions.jsonl")
        assert len(coll) == 7 and coll.path(0) == f"{url}/pairs/images/0.png"
        assert coll.load(5).tobytes() == open_collection(str(tmp_path / "pairs" / "captions.jsonl")).load(5).tobytes()
        # plain HTTP has no folders: the error says so and what to give instead
        for call in (lambda: ImageTextFolder(f"{url}/pairs/folder/"), lambda: open_collection(f"{url}/pairs/folder/"),
                     lambda: load_classification_dataset(f"{url}/classes/")):
            with pytest.raises(ValueError, match="plain HTTP has no folder listing.*caption index"):
                call()


class MeanColour:
    """The smallest encoder for ``embed``: a unit vector from an image's mean colour."""

    dim = 3
    info = {"model": "mean-colour", "dim": 3}

    def preprocess(self, image):
        import torch

        return torch.from_numpy(np.asarray(image.resize((2, 2)), dtype=np.float32)).permute(2, 0, 1)  # (3, 2, 2)

    def encode_images(self, images):  # (B, 3, H, W) -> (B, 3)
        v = images.mean(dim=(2, 3)).numpy() + 1.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embed_and_quickstart_data_read_a_bucket_folder(tmp_path, s3):
    from openeva.quickstart.user_chain import UserChainConfig, prepare_user_data
    from openeva.serve.embed import embed, load_embeddings

    files = make_tree(tmp_path)
    url = upload(s3, tmp_path, files)
    for src, local in ((f"{url}/pairs/folder/", tmp_path / "pairs" / "folder"),
                       (f"{url}/pairs/captions.csv", tmp_path / "pairs" / "captions.csv")):
        name = src.rstrip("/").rsplit("/", 1)[-1]
        remote = embed(src, out=tmp_path / f"emb-{name}", encoder=MeanColour(), dtype="float32", progress=False)
        disk = embed(str(local), out=tmp_path / f"disk-{name}", encoder=MeanColour(), dtype="float32", progress=False)
        assert remote["count"] == disk["count"] == 6  # the index's missing image skipped on both sides
        vectors = [load_embeddings(tmp_path / f"{side}-{name}")[0] for side in ("emb", "disk")]
        assert np.array_equal(*vectors)
    # quickstart --data prepares a class folder in a bucket as one on disk
    prepared = prepare_user_data(f"{url}/classes/", None, tmp_path / "qs", UserChainConfig.preset("fast"),
                                 ["a photo of a {c}."])
    assert prepared.classnames == ["blue", "green", "red"] and prepared.num_train + prepared.num_val == 6


@pytest.mark.slow  # two short clip_tiny runs: about 40 s on 2 CPU cores
def test_clip_tiny_trains_from_a_caption_index_in_a_bucket_as_from_disk(tmp_path, s3):
    from openeva.configs import CONFIG_DIR
    from openeva.train.config import load_config
    from openeva.train.runner import train

    files = make_tree(tmp_path)
    url = upload(s3, tmp_path, files)

    def losses(name, source):
        cfg = load_config(CONFIG_DIR / "clip_tiny.py", [
            f"output_dir={tmp_path}", f"name={name}", "progress=false", "tensorboard=false", "plot=false",
            "data.val=none", "data.zeroshot=none", "log_every=1", "schedule.total_steps=2", "schedule.warmup_steps=1",
            "data.batch_size=2", "save_every=100", "data.num_workers=1", f"data.train={source}"])
        train(cfg)
        rows = map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
        return [r["loss"] for r in rows if r["split"] == "train"]

    assert losses("s3", f"{url}/pairs/captions.csv") == losses("disk", str(tmp_path / "pairs" / "captions.csv"))


def test_a_server_without_range_requests_is_named_when_a_member_is_read(tmp_path):
    """Python's own http.server ignores Range: reading a tar member by its byte range says so, not 'corrupt'."""
    import functools
    import http.server
    import threading

    from openeva.data.sources import read_range

    (tmp_path / "shard.tar").write_bytes(bytes(range(256)) * 64)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match="does not answer range requests"):
            read_range(f"http://127.0.0.1:{server.server_address[1]}/shard.tar", 10, 5)
    finally:
        server.shutdown()
        server.server_close()
