import numpy as np
import pytest
import torch
from PIL import Image

from openeva.data.synthetic import (
    COLORS,
    HELDOUT_PAIRS,
    SHAPES,
    ShapesClassification,
    ShapesDataset,
    color_class_names,
    shape_class_names,
    shape_color_class_names,
)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, H, W)


def fake_tokenizer(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 8, dtype=torch.long)
    for i, text in enumerate(texts):
        out[i, : min(8, len(text.split()))] = 1
    return out


def test_samples_are_images_with_captions_naming_their_attributes():
    ds = ShapesDataset(50, image_size=48, seed=0, split="all")
    assert len(ds) == 50
    for i in range(50):
        image, caption = ds[i]
        attrs = ds.attributes(i)
        assert isinstance(image, Image.Image) and image.size == (48, 48) and image.mode == "RGB"
        for word in attrs:
            assert word in caption
    assert ds.labels[3] == ds.attributes(3)
    assert len({ds[i][1] for i in range(50)}) > 10  # several templates and combinations


def test_deterministic_by_seed_and_index():
    a, b = ShapesDataset(20, seed=1), ShapesDataset(200, seed=1)
    for i in (0, 7, 19):
        assert a[i][1] == b[i][1]
        assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0]))
    c = ShapesDataset(20, seed=2)
    assert [a[i][1] for i in range(20)] != [c[i][1] for i in range(20)]
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(a[1][0]))


def test_shape_is_drawn_where_the_caption_says():
    ds = ShapesDataset(60, image_size=64, seed=0, split="all")
    for i in range(60):
        image, _ = ds[i]
        attrs = ds.attributes(i)
        pixels = np.asarray(image).astype(int)
        background = np.median(pixels.reshape(-1, 3), axis=0)
        fg = np.abs(pixels - background).sum(-1) > 90  # (H, W) shape pixels
        ys, xs = np.nonzero(fg)
        assert len(ys) > 20
        cx, cy = xs.mean() / 64, ys.mean() / 64
        if "left" in attrs.position:
            assert cx < 0.45
        if "right" in attrs.position:
            assert cx > 0.55
        if "top" in attrs.position:
            assert cy < 0.45
        if attrs.position == "center":
            assert 0.4 < cx < 0.6 and 0.4 < cy < 0.6
        mean_color = pixels[fg].mean(0)
        assert np.abs(mean_color - np.array(COLORS[attrs.color])).max() < 40


def test_large_shapes_cover_more_pixels_than_small_ones():
    ds = ShapesDataset(120, image_size=64, seed=3, split="all")
    areas = {}
    for i in range(120):
        pixels = np.asarray(ds[i][0]).astype(int)
        fg = np.abs(pixels - np.median(pixels.reshape(-1, 3), axis=0)).sum(-1) > 90
        attrs = ds.attributes(i)
        areas.setdefault((attrs.shape, attrs.size), []).append(fg.sum())
    for shape in SHAPES:
        assert max(areas[(shape, "small")]) < min(areas[(shape, "large")])


def test_heldout_pairs_never_in_train_and_only_in_heldout():
    heldout = set(HELDOUT_PAIRS)
    train = ShapesDataset(400, split="train").labels
    assert not {(a.shape, a.color) for a in train} & heldout
    assert {a.shape for a in train} == set(SHAPES) and {a.color for a in train} == set(COLORS)
    held = ShapesDataset(200, split="heldout").labels
    assert {(a.shape, a.color) for a in held} == heldout
    every = ShapesDataset(600, split="all").labels
    assert {(a.shape, a.color) for a in every} & heldout


def test_transform_and_tokenizer_are_applied():
    ds = ShapesDataset(4, image_size=32, transform=to_tensor, tokenizer=fake_tokenizer)
    image, tokens = ds[0]
    assert image.shape == (3, 32, 32) and tokens.shape == (8,) and tokens.dtype == torch.long


@pytest.mark.parametrize("attribute, names", [
    ("shape", shape_class_names()),
    ("color", color_class_names()),
    ("shape_color", shape_color_class_names()),
])
def test_classification_view(attribute, names):
    ds = ShapesClassification(40, attribute=attribute, split="all", image_size=32, transform=to_tensor)
    assert ds.classes == names
    assert all("{}" in t for t in ds.templates)
    for i in range(40):
        image, target = ds[i]
        attrs = ds.shapes.attributes(i)
        assert image.shape == (3, 32, 32)
        assert target == ds.targets[i]
        name = names[target]
        if attribute == "shape":
            assert name == attrs.shape
        elif attribute == "color":
            assert name == attrs.color
        else:
            assert name == f"{attrs.color} {attrs.shape}"


def test_classification_heldout_split_uses_the_same_class_indices():
    held = ShapesClassification(30, attribute="shape_color", split="heldout")
    assert len(held.classes) == len(SHAPES) * len(COLORS)
    names = {held.classes[t] for t in held.targets}
    assert names <= {f"{c} {s}" for s, c in HELDOUT_PAIRS}


@pytest.mark.parametrize("kwargs, error", [
    ({"num_samples": -1}, ValueError),
    ({"num_samples": 4, "split": "test"}, ValueError),
    ({"num_samples": 4, "image_size": 4}, ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ShapesDataset(**kwargs)
    with pytest.raises(ValueError, match="attribute"):
        ShapesClassification(4, attribute="size")


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesDataset(3)[3]
