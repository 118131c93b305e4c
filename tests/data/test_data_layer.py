"""The one data layer: readers shared by training and evaluation, and its user-facing rules."""

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from openeva.data.captions import CaptionDataset
from openeva.data.image_lists import FileImages, LabelledImages
from openeva.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, list_images, open_rgb, prepare_sample
from openeva.data.index import read_index, resolve_listed_path
from openeva.data.labelled import load_classification_dataset, load_retrieval_dataset, match_folder_classes
from openeva.data.loader import collate_skip_none
from openeva.data.webdataset import TarShardDataset, expand_urls, index_shard, shard_paths, write_shards


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, 20, 200)).save(path)
    return path


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)  # (3, 8, 8)


class FailsOnBlue:
    """A transform that raises for some images, as a buggy augmentation would."""

    def __call__(self, image):
        if image.getpixel((0, 0))[0] > 150:
            raise RuntimeError("augmentation failed on this image")
        return _to_tensor(image)


def test_one_opener_one_extension_list_one_error_tuple(tmp_path):
    good = _png(tmp_path / "a" / "x.PNG")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert ".png" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    assert [p.name for p in list_images(tmp_path)] == ["bad.jpg", "x.PNG"]
    assert open_rgb(good).mode == "RGB" and open_rgb(good.read_bytes()).size == (12, 10)
    with pytest.raises(DECODE_ERRORS):
        open_rgb(tmp_path / "a" / "bad.jpg")


def test_failing_transform_skips_and_counts_the_sample_everywhere(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", value=200 if i % 2 else 10) for i in range(6)]
    ds = LabelledImages(FileImages(paths), FailsOnBlue(), targets=list(range(6)))
    batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_skip_none))
    assert sum(b.num_skipped for b in batches) == 3 and sum(b.size for b in batches) == 3
    assert ds.skipped["transform_error"] == 3
    # the caption reader and the shard reader follow the same rule
    (tmp_path / "index.csv").write_text("filepath,title\n" + "".join(f"{i}.png,cap {i}\n" for i in range(6)))
    captions = CaptionDataset(tmp_path / "index.csv", transform=FailsOnBlue())
    assert [captions[i] is None for i in range(6)] == [False, True] * 3
    assert captions.skipped == Counter({"transform_error": 3})
    shards = write_shards([(Image.open(p), f"c{i}") for i, p in enumerate(paths)], tmp_path / "shards", 4,
                          image_format="png")
    stream = TarShardDataset(shards, transform=FailsOnBlue())
    assert sum(s is None for s in stream) == 3 and stream.skipped["transform_error"] == 3


def test_prepare_sample_reasons(tmp_path):
    skipped = Counter()
    assert prepare_sample(lambda: open_rgb(tmp_path / "missing.png"), None, skipped, "m") is None
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert prepare_sample(lambda: open_rgb(tmp_path / "bad.png"), None, skipped, "b") is None
    assert skipped == Counter({"missing_file": 1, "corrupt_image": 1})


def test_caption_paths_resolve_beside_the_csv_then_the_working_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    _png(work / "images" / "a.png")  # relative to the working directory (open_clip's convention)
    _png(work / "meta" / "b.png")  # relative to the CSV's folder
    index = work / "meta" / "train.csv"
    index.write_text("filepath,title\nimages/a.png,from cwd\nb.png,beside\nnowhere.png,missing\n")
    monkeypatch.chdir(work)
    ds = CaptionDataset(index, transform=_to_tensor)
    assert ds[0] is not None and ds[1] is not None and ds[2] is None
    assert ds.skipped["missing_file"] == 1
    assert resolve_listed_path("b.png", index.parent) == index.parent / "b.png"
    (work / "meta" / "eval.csv").write_text("filepath,caption\nimages/a.png,x\nb.png,y\n")
    data = load_retrieval_dataset(work / "meta" / "eval.csv")
    assert all(Path(p).is_file() for p in data.images.ids)


def test_folder_classnames_match_by_name_not_position(tmp_path):
    for name in ("ankle_boot", "bag", "T-shirt_top"):
        _png(tmp_path / "ds" / name / "0.png")
    names = ["T-shirt/top", "Bag", "Ankle boot"]  # order of a builtin list, not of the sorted folders
    data = load_classification_dataset(tmp_path / "ds", classnames=names)
    by_folder = {Path(p).parent.name: data.classnames[label] for p, label in zip(data.images.ids, data.labels)}
    assert by_folder == {"ankle_boot": "Ankle boot", "bag": "Bag", "T-shirt_top": "T-shirt/top"}
    with pytest.raises(ValueError, match=r"Folders without a class name: \['bag'\].*without a folder: \['Coat'\]"):
        match_folder_classes(["ankle_boot", "bag"], ["Ankle boot", "Coat"], "ds")


def test_one_brace_grammar_for_training_and_evaluation(tmp_path):
    assert expand_urls("s-{08..10}.tar::t-{a,b}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "t-a.tar", "t-b.tar"]
    shards = write_shards([(Image.new("RGB", (8, 8)), f"c{i}") for i in range(4)], tmp_path, 2, prefix="x")
    pattern = str(tmp_path / "x-{000000,000001}.tar")  # a list pattern, which evaluation used to refuse
    assert shard_paths(pattern) == [str(s) for s in shards] == shard_paths(tmp_path)
    assert load_retrieval_dataset(pattern).captions == [["c0"], ["c1"], ["c2"], ["c3"]]
    assert sorted(index_shard(str(shards[0]))) == ["000000000", "000000001"]


def test_index_reader_detects_nothing_it_is_not_told(tmp_path):
    (tmp_path / "a.tsv").write_text("image\tlabel\nx.png\t1\n")
    rows, columns = read_index(tmp_path / "a.tsv")
    assert columns == ["image", "label"] and rows == [{"image": "x.png", "label": "1"}]


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_gzipped_idx_folder_as_debian_ships_fashion_mnist(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    for split in ("train", "t10k"):
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    data = load_classification_dataset(tmp_path, split="test")
    assert data.labels == labels.tolist() and data.images.load(0).size == (28, 28)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's fashion-mnist absent")
def test_installed_fashion_mnist_loads():
    from openeva.data.classnames import load_classnames

    data = load_classification_dataset("/usr/share/datasets/fashion-mnist", classnames=load_classnames(
        "fashion_mnist"), split="test")
    assert data.num_classes == 10 and len(data.labels) == 10_000 and data.images.load(0).size == (28, 28)
