import csv
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from torch.utils.data import DataLoader

from openeva.data.captions import CaptionDataset, ImageTextFolder
from openeva.data.loader import Batch, collate_skip_none
from openeva.data.masking import BlockMaskGenerator
from openeva.train.data import ResumableLoader
from openeva.train.mim_task import with_masks


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.resize((16, 16)))).permute(2, 0, 1).float() / 255  # (3, 16, 16)


def fake_tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), len(t.split())] for t in texts], dtype=torch.long)  # (N, 2)


def save_image(path, value=100, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 24), (value, 50, 200)).save(path, format=fmt)
    return path


@pytest.fixture
def image_dir(tmp_path):
    """Four good images, one garbage file, one truncated PNG."""
    root = tmp_path / "images"
    for i in range(4):
        save_image(root / f"img{i}.jpg", value=40 * i)
    (root / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    good_png = save_image(root / "full.png", fmt="PNG").read_bytes()
    (root / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    return root


def write_csv(path, rows, sep=","):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=sep)
        writer.writeheader()
        writer.writerows(rows)
    return path


ROWS = [
    {"filepath": "images/img0.jpg", "title": "a blue square, with a comma"},
    {"filepath": "images/img1.jpg", "title": "second image"},
    {"filepath": "images/missing.jpg", "title": "no such file"},
    {"filepath": "images/garbage.jpg", "title": "garbage bytes"},
    {"filepath": "images/truncated.png", "title": "truncated png"},
    {"filepath": "images/img2.jpg", "title": "   "},
    {"filepath": "images/img3.jpg", "title": "fourth  image\n"},
]


def test_csv_good_and_bad_samples(tmp_path, image_dir):
    ds = CaptionDataset(write_csv(tmp_path / "index.csv", ROWS))
    assert len(ds) == 7
    image, text = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and text == "a blue square, with a comma"
    assert ds[6][1] == "fourth image"  # whitespace normalized
    assert [ds[i] is None for i in range(7)] == [False, False, True, True, True, True, False]
    assert ds.skipped == {"missing_file": 1, "corrupt_image": 2, "empty_caption": 1}


@pytest.mark.parametrize("name, sep", [("index.tsv", None), ("index.csv", "\t")])
def test_tab_separated(tmp_path, image_dir, name, sep):
    path = write_csv(tmp_path / name, ROWS[:2], sep="\t")
    ds = CaptionDataset(path, sep=sep, transform=to_tensor, tokenizer=fake_tokenizer)
    image, tokens = ds[0]
    assert image.shape == (3, 16, 16)
    assert tokens.tolist() == [len(ROWS[0]["title"]), 6]


def test_jsonl_custom_keys_root_and_missing_caption(tmp_path, image_dir):
    path = tmp_path / "meta" / "index.jsonl"
    path.parent.mkdir()
    lines = [
        {"img": "img0.jpg", "caption": "first"},
        {"img": str(image_dir / "img1.jpg"), "caption": ["listed caption", "another"]},  # absolute path
        {"img": "img2.jpg"},  # no caption
        {"img": "img3.jpg", "caption": None},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    ds = CaptionDataset(path, image_key="img", caption_key="caption", root=image_dir)
    assert ds[0][1] == "first" and ds[1][1] == "listed caption"
    assert ds[2] is None and ds[3] is None
    assert ds.skipped == {"missing_caption": 2}


def test_relative_paths_resolve_against_index_folder(tmp_path, image_dir):
    index = write_csv(image_dir / "local.csv", [{"filepath": "img0.jpg", "title": "here"}])
    assert CaptionDataset(index)[0][1] == "here"


@pytest.mark.parametrize("image_key, caption_key, bad", [("path", "title", "path"), ("filepath", "text", "text")])
def test_missing_column_names_the_column_and_lists_available(tmp_path, image_key, caption_key, bad):
    path = write_csv(tmp_path / "index.csv", ROWS)
    with pytest.raises(ValueError, match=rf"'{bad}'.*available columns: \['filepath', 'title'\]"):
        CaptionDataset(path, image_key=image_key, caption_key=caption_key)


def test_index_errors_raise_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CaptionDataset(tmp_path / "nope.csv")
    (tmp_path / "index.parquet").write_text("x")
    with pytest.raises(ValueError, match="extension"):
        CaptionDataset(tmp_path / "index.parquet")
    (tmp_path / "bad.jsonl").write_text('{"filepath": "a", "title": "b"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        CaptionDataset(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("filepath,title\n")
    with pytest.raises(ValueError, match="no rows"):
        CaptionDataset(tmp_path / "empty.csv")
    wrong_sep = write_csv(tmp_path / "tabs.csv", ROWS[:1], sep="\t")
    with pytest.raises(ValueError, match="sep"):
        CaptionDataset(wrong_sep)
    with pytest.raises(FileNotFoundError, match="root"):
        CaptionDataset(write_csv(tmp_path / "ok.csv", ROWS), root=tmp_path / "absent")


def test_image_text_folder(tmp_path):
    root = tmp_path / "pairs"
    for i, ext in enumerate(["jpg", "jpeg", "PNG", "webp", "bmp"]):
        save_image(root / "sub" / f"a{i}.{ext}", fmt={"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper()))
        (root / "sub" / f"a{i}.txt").write_text(f"caption {i}\n", encoding="utf-8")
    save_image(root / "nocap.jpg")
    save_image(root / "blank.jpg")
    (root / "blank.txt").write_text("\n  \n")
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "broken.txt").write_text("broken")
    (root / "notes.md").write_text("ignored")
    ds = ImageTextFolder(root, transform=to_tensor)
    assert len(ds) == 8
    samples = [ds[i] for i in range(len(ds))]
    good = [s for s in samples if s is not None]
    assert sorted(s[1] for s in good) == [f"caption {i}" for i in range(5)]
    assert ds.skipped == {"missing_caption": 1, "empty_caption": 1, "corrupt_image": 1}
    assert len(ImageTextFolder(root, recursive=False)) == 3


def test_image_text_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageTextFolder(tmp_path / "absent")
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageTextFolder(tmp_path)


def test_collate_skip_none():
    a = (torch.zeros(3, 4, 4), "x")
    b = (torch.ones(3, 4, 4), "y")
    batch = collate_skip_none([a, None, b, None])
    assert isinstance(batch, Batch) and batch.num_skipped == 2 and batch.size == 2
    images, texts = batch
    assert images.shape == (2, 3, 4, 4) and texts == ["x", "y"]
    assert batch.images is images and batch.texts == texts
    assert collate_skip_none([None, None]) is None
    restored = pickle.loads(pickle.dumps(batch))
    assert isinstance(restored, Batch) and restored.num_skipped == 2 and torch.equal(restored[0], images)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.num_skipped == 2
    pil = collate_skip_none([(Image.new("RGB", (2, 2)), "p")])
    assert isinstance(pil.images, list) and pil.num_skipped == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_reports_skips_per_batch(tmp_path, image_dir, num_workers):
    ds = CaptionDataset(write_csv(tmp_path / "index.csv", ROWS), transform=to_tensor, tokenizer=fake_tokenizer)
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_none)
    batches = list(loader)  # rows [good, good, bad, bad], [bad, bad, good]
    assert [b.num_skipped for b in batches] == [2, 2]
    assert [b.size for b in batches] == [2, 1]
    assert all(b.images.shape[1:] == (3, 16, 16) and b.texts.shape[1] == 2 for b in batches)


def test_loader_splits_ranks_and_reshuffles_per_epoch():
    data = [(torch.tensor(float(i)), i) for i in range(20)]
    seen = []
    for rank in range(2):
        loader = ResumableLoader(data, batch_size=5, rank=rank, world_size=2, seed=1)
        seen.append([int(i) for b in loader.batches(0) for i in b.texts])
    assert sorted(seen[0] + seen[1]) == list(range(20))
    loader = ResumableLoader(data, batch_size=5, rank=0, world_size=2, seed=1)
    assert [int(i) for b in loader.batches(1) for i in b.texts] != seen[0]
    with pytest.raises(ValueError, match="rank"):
        ResumableLoader(data, batch_size=2, rank=2, world_size=2)


def test_masked_images_collate_with_masks_and_skips():
    generator = BlockMaskGenerator(grid_size=(4, 4), num_masking_patches=6, min_num_patches=2)
    data = with_masks([(torch.zeros(3, 8, 8), "a"), None, (torch.zeros(3, 8, 8), "b")], generator, seed=0)
    batch = collate_skip_none([data[i] for i in range(3)])
    images, masks = batch
    assert masks.shape == (2, 4, 4) and masks.dtype == torch.bool
    assert masks.flatten(1).sum(1).tolist() == [6, 6] and batch.num_skipped == 1
    assert collate_skip_none([data[1]]) is None
