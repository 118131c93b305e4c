import gzip
import io
import json
import tarfile

import numpy as np
import pytest
from evalfakes import NAMES, idx_bytes, solid_image, write_mnist_split

from openeva.data.idx import read_idx
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import detect_format, load_classification_dataset, load_retrieval_dataset
from openeva.data.webdataset import expand_urls


# ------------------------------------------------------------------------------------------ IDX
def test_read_idx_uint8_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "b-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("a-images-idx3-ubyte", "b-images-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, images)


def test_read_idx_int32_is_big_endian(tmp_path):
    values = np.array([1, 256, 70000, -5], dtype=np.int32)
    (tmp_path / "x-idx1-ubyte").write_bytes(idx_bytes(values, 0x0C, ">i4"))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx1-ubyte"), values)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad-idx1-ubyte").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad-idx1-ubyte")
    good = idx_bytes(np.zeros((4,), np.uint8))
    (tmp_path / "short-idx1-ubyte").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(tmp_path / "short-idx1-ubyte")


def test_idx_dataset_picks_split_and_decodes(tmp_path, preprocess):
    write_mnist_split(tmp_path, "train", [0, 1, 2, 1])
    write_mnist_split(tmp_path, "t10k", [2, 0], gz=False)
    assert detect_format(tmp_path) == "idx"
    test = load_classification_dataset(tmp_path, split="test")
    train = load_classification_dataset(tmp_path, "idx", split="train")
    assert test.labels == [2, 0] and train.labels == [0, 1, 2, 1]
    assert train.classnames == ["0", "1", "2"]
    img = test.images.load(0)
    assert img.mode == "RGB" and img.size == (28, 28) and img.getpixel((0, 0)) == (50, 50, 50)
    with pytest.raises(ValueError, match="exactly one"):
        load_classification_dataset(tmp_path, "idx")  # two splits, none chosen
    with pytest.raises(ValueError, match="class names do not match"):
        load_classification_dataset(tmp_path, "idx", classnames=["a", "b"], split="train")


# ------------------------------------------------------------------------------------------ folders
def test_folder_dataset(make_folder, preprocess):
    root = make_folder(per_class=2)
    data = load_classification_dataset(root)
    assert data.classnames == NAMES[:4]
    assert data.labels == [0, 0, 1, 1, 2, 2, 3, 3]
    x, i = LabelledImages(data.images, preprocess)[2]
    assert i == 2 and x.shape == (3, 8, 8)
    assert data.name == "ds"


def test_folder_empty_class_is_an_error(make_folder):
    root = make_folder(per_class=1)
    (root / "zulu").mkdir()
    with pytest.raises(ValueError, match="zulu.*contains no images"):
        load_classification_dataset(root)


def test_folder_classnames_mismatch_is_an_error(make_folder):
    root = make_folder(per_class=1)
    with pytest.raises(ValueError, match="3 class names given but folder .* has 4 classes"):
        load_classification_dataset(root, classnames=["a", "b", "c"])


def test_corrupt_image_decodes_to_none(make_folder, preprocess):
    root = make_folder(per_class=1)
    (root / "alpha" / "broken.png").write_bytes(b"not a png at all")
    data = load_classification_dataset(root)
    ds = LabelledImages(data.images, preprocess)
    broken = [i for i, p in enumerate(data.images.ids) if p.endswith("broken.png")][0]
    assert ds[broken] is None and ds.skipped["corrupt_image"] == 1


# ------------------------------------------------------------------------------------------ csv / jsonl
def test_csv_string_labels_and_relative_paths(tmp_path):
    for i, k in enumerate([0, 1, 1]):
        solid_image(k).save(tmp_path / f"{i}.png")
    (tmp_path / "val.csv").write_text("filepath,label\n0.png,cat\n1.png,dog\n2.png,dog\n")
    data = load_classification_dataset(tmp_path / "val.csv")
    assert data.classnames == ["cat", "dog"] and data.labels == [0, 1, 1]
    assert data.images.load(1).getpixel((0, 0))[0] == 30
    named = load_classification_dataset(tmp_path / "val.csv", classnames=["dog", "cat", "bird"])
    assert named.labels == [1, 0, 0]
    with pytest.raises(ValueError, match=r"labels \['dog'\] are not class names"):
        load_classification_dataset(tmp_path / "val.csv", classnames=["cat", "bird"])


def test_csv_integer_labels_out_of_range_for_classnames(tmp_path):
    (tmp_path / "a.csv").write_text("image,class\nx.png,0\ny.png,4\n")
    with pytest.raises(ValueError, match="label 4 needs at least 5 class names"):
        load_classification_dataset(tmp_path / "a.csv", classnames=["a", "b"])


def test_csv_missing_column_names_the_columns(tmp_path):
    (tmp_path / "a.csv").write_text("picture,label\nx.png,0\n")
    with pytest.raises(ValueError, match=r"no image column.*columns are \['picture', 'label'\]"):
        load_classification_dataset(tmp_path / "a.csv")


def test_retrieval_csv_groups_rows_per_image(tmp_path):
    (tmp_path / "caps.csv").write_text("image,caption\na.png,one\nb.png,two\na.png,three\n")
    data = load_retrieval_dataset(tmp_path / "caps.csv")
    assert [p.split("/")[-1] for p in data.images.ids] == ["a.png", "b.png"]
    assert data.captions == [["one", "three"], ["two"]]


def test_retrieval_jsonl_caption_lists(tmp_path):
    rows = [{"image": "a.png", "captions": ["x", "y"]}, {"image": "b.png", "captions": ["z"]}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_retrieval_dataset(tmp_path / "caps.jsonl")
    assert data.captions == [["x", "y"], ["z"]]


def test_retrieval_coco_json(tmp_path):
    ann = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
           "annotations": [{"image_id": 9, "caption": "b1"}, {"image_id": 7, "caption": "a1"},
                           {"image_id": 9, "caption": "b2"}]}
    (tmp_path / "captions_val.json").write_text(json.dumps(ann))
    data = load_retrieval_dataset(tmp_path / "captions_val.json")
    assert data.captions == [["a1"], ["b1", "b2"]]


# ------------------------------------------------------------------------------------------ webdataset
def add_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(k):
    buf = io.BytesIO()
    solid_image(k).save(buf, format="PNG")
    return buf.getvalue()


def test_wds_classification_and_retrieval(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard:03d}.tar", "w") as tar:
            for j in range(2):
                k = 2 * shard + j
                add_member(tar, f"s{k}.png", png_bytes(k))
                add_member(tar, f"s{k}.cls", str(k).encode())
                add_member(tar, f"s{k}.txt", f"caption {k}\nsecond {k}".encode())
            add_member(tar, f"orphan{shard}.cls", b"0")  # a sample without image: skipped, counted
    pattern = str(tmp_path / "shard-{000..001}.tar")
    assert expand_urls(pattern) == [str(tmp_path / "shard-000.tar"), str(tmp_path / "shard-001.tar")]
    assert detect_format(tmp_path) == "wds" and detect_format(pattern) == "wds"
    cls = load_classification_dataset(pattern)
    assert cls.labels == [0, 1, 2, 3] and len(cls.skipped) == 2
    assert cls.images.load(3).getpixel((0, 0))[0] == 70
    ret = load_retrieval_dataset(tmp_path / "shard-001.tar")
    assert ret.captions == [["caption 2", "second 2"], ["caption 3", "second 3"]]


def test_wds_sample_without_cls_is_an_error(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "s0.png", png_bytes(0))
    with pytest.raises(ValueError, match="has no 'cls' key"):
        load_classification_dataset(tmp_path / "a.tar")


# ------------------------------------------------------------------------------------------ formats
def test_unknown_format_errors(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_classification_dataset(tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="unknown dataset type 'xml'"):
        load_classification_dataset(tmp_path, dataset_type="xml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot detect"):
        load_classification_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_classification_dataset(tmp_path / "missing")
