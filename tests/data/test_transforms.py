"""Validation preprocessing must equal open_clip's pixel for pixel; training and config behave as documented."""

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.data.images import load_image
from openeva.data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PreprocessConfig,
    image_transform,
)

open_clip_transform = pytest.importorskip("open_clip.transform")


def _image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradient plus noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    return img if mode == "RGB" else img.convert(mode)


# (width, height): 200x305 makes rounding and truncating the long side differ; 97x61 is below the target.
IMAGES = [(300, 200), (150, 400), (200, 305), (97, 61)]
SIZES = [224, (224, 320)]


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("wh", IMAGES)
def test_validation_matches_open_clip(wh, size, resize_mode):
    img = _image(*wh)
    cfg = PreprocessConfig(size=size, resize_mode=resize_mode)
    ours = image_transform(cfg, is_train=False)(img)
    theirs = open_clip_transform.image_transform(
        size, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resize_mode=resize_mode,
        interpolation="bicubic",
    )(img)
    assert ours.shape == (3, *cfg.size)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_validation_converts_to_rgb_like_open_clip(mode):
    img = _image(180, 130, mode=mode, seed=1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cfg = PreprocessConfig(size=64, mean=mean, std=std, interpolation="bilinear")
    theirs = open_clip_transform.image_transform(64, is_train=False, mean=mean, std=std, interpolation="bilinear")
    assert torch.equal(image_transform(cfg, is_train=False)(img), theirs(img))


def test_train_shape_and_seed_determinism():
    img = _image(300, 200)
    transform = image_transform(PreprocessConfig(size=(32, 48)), is_train=True, scale=(0.2, 1.0), hflip=0.5)
    torch.manual_seed(0)
    first = [transform(img) for _ in range(4)]
    torch.manual_seed(0)
    second = [transform(img) for _ in range(4)]
    assert first[0].shape == (3, 32, 48) and first[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(first[0], other) for other in first[1:])  # crops actually vary


def test_train_full_scale_no_flip_is_a_plain_resize_of_full_image():
    # With scale=(1, 1) and a square image RandomResizedCrop takes the whole image: nothing random is left.
    img = _image(64, 64)
    cfg = PreprocessConfig(size=32)
    train = image_transform(cfg, is_train=True, scale=(1.0, 1.0))(img)
    val = image_transform(PreprocessConfig(size=32, resize_mode="squash"), is_train=False)(img)
    assert torch.equal(train, val)


def test_train_hflip_always_flips():
    img = _image(64, 64)
    cfg = PreprocessConfig(size=32)
    plain = image_transform(cfg, is_train=True, scale=(1.0, 1.0))(img)
    flipped = image_transform(cfg, is_train=True, scale=(1.0, 1.0), hflip=1.0)(img)
    assert torch.equal(flipped, plain.flip(-1))


def test_config_normalizes_and_round_trips():
    cfg = PreprocessConfig(size=224, mean=[0.5, 0.5, 0.5], std=0.5)
    assert cfg.size == (224, 224) and cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    open_clip_style = {"size": 224, "mode": "RGB", "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD,
                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    assert PreprocessConfig.from_dict(open_clip_style) == PreprocessConfig()
    with pytest.raises(Exception):
        cfg.size = (1, 1)  # frozen


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "size"),
        ({"size": (224, 224, 3)}, "size"),
        ({"size": (224.0, 224)}, "height"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"resize_mode": "crop"}, "resize_mode"),
    ],
)
def test_bad_config_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**kwargs)


def test_bad_dict_and_train_args_rejected():
    with pytest.raises(ValueError, match="colour"):
        PreprocessConfig.from_dict({"size": 224, "colour": "red"})
    with pytest.raises(ValueError, match="fill_color"):
        PreprocessConfig.from_dict({"size": 224, "fill_color": 255})
    with pytest.raises(ValueError, match="scale"):
        image_transform(PreprocessConfig(), is_train=True, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        image_transform(PreprocessConfig(), is_train=True, scale=(0.9, 0.2))
    with pytest.raises(ValueError, match="hflip"):
        image_transform(PreprocessConfig(), is_train=True, hflip=1.5)
    with pytest.raises(ValueError, match="PreprocessConfig"):
        image_transform({"size": 224}, is_train=False)


def test_load_image_ok_corrupt_and_missing(tmp_path):
    good = tmp_path / "good.png"
    _image(20, 10).save(good)
    img = load_image(good)
    assert img.size == (20, 10) and img.mode == "RGB"
    assert np.asarray(img).shape == (10, 20, 3)  # usable after the file is closed

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*corrupt.jpg"):
        load_image(corrupt)

    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="cannot decode image .*truncated.png"):
        load_image(truncated)

    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
