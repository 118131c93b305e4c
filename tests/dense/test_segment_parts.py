"""Open-vocabulary segmentation parts: the MaskCLIP value path against the block's own forward, refinements,
label rules, the segmenter API, the label / overlay pictures and the ``openeva segment`` CLI errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.cli import main
from openeva.dense.segment import (
    DenseOptions,
    dense_embeddings,
    logits_to_labels,
    segment_labels,
    segment_logits,
    segment_probs,
    upsampled_rows,
)
from openeva.dense.segmenter import OpenVocabSegmenter, label_image, model_input, overlay, parse_labels
from openeva.factory import create_model, get_tokenizer


def _reference_dense(model, images, method):
    """The last block run through its own modules with attention restricted to each token itself."""
    v = model.visual
    x, rope, _ = v._embed(images, None)
    for blk in v.blocks[:-1]:
        x = blk(x, rope)
    blk = v.blocks[-1]
    L = x.shape[1]
    self_only = torch.full((L, L), float("-inf"))
    self_only.fill_diagonal_(0.0)
    if method == "value":
        a = blk.attn(x if blk.post_norm else blk.norm1(x), rope, self_only)
        y = blk.norm1(a) if blk.post_norm else a
    elif blk.post_norm:
        y = x + blk.norm1(blk.attn(x, rope, self_only))
        y = y + blk.norm2(blk.mlp(y))
    else:
        y = x + blk.attn(blk.norm1(x), rope, self_only)
        y = y + blk.mlp(blk.norm2(y))
    norm = v.norm if isinstance(v.norm, torch.nn.LayerNorm) else v.fc_norm
    z = v.head(norm(y))[:, 1:]  # (B, N, E)
    g = v.patch_embed.grid_size(images.shape[-2:])
    return torch.nn.functional.normalize(z.transpose(1, 2).reshape(len(images), -1, *g), dim=1)


@pytest.mark.parametrize("name", ["EVA02-test", "EVA02-E-test"])
@pytest.mark.parametrize("method", ["maskclip", "value"])
def test_value_path_matches_self_only_attention(name, method, randomize):
    torch.manual_seed(0)
    model = randomize(create_model(name)).eval()
    images = torch.randn(2, 3, 32, 48)  # non-square: RoPE / pos-embed resampling on the way
    with torch.no_grad():
        ref = _reference_dense(model, images, method)
    got = dense_embeddings(model, images, DenseOptions(method=method, refine="none"))
    assert got.shape == (2, 32, 4, 6)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_refinements_change_features_and_keep_shape(randomize):
    model = randomize(create_model("EVA02-test")).eval()
    images = torch.randn(1, 3, 32, 32)
    base = dense_embeddings(model, images, DenseOptions(refine="none"))
    for refine in ("fusion", "smooth", "fusion+smooth"):
        out = dense_embeddings(model, images, DenseOptions(refine=refine))
        assert out.shape == base.shape
        torch.testing.assert_close(out.norm(dim=1), torch.ones(1, 4, 4))
        assert not torch.allclose(out, base)
    assert model.visual.training is False


def test_options_and_inputs_are_checked():
    with pytest.raises(ValueError, match="method"):
        DenseOptions(method="bogus")
    with pytest.raises(ValueError, match="refine"):
        DenseOptions(refine="crf")
    with pytest.raises(ValueError, match="odd"):
        DenseOptions(smooth_window=2)
    backbone = create_model("eva02_test_patch8_32")
    with pytest.raises(ValueError, match="projection head"):
        dense_embeddings(backbone, torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="EVA"):
        dense_embeddings(torch.nn.Linear(2, 2), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no labels"):
        parse_labels(" , ")
    with pytest.raises(ValueError, match="repeat"):
        parse_labels("sky,road,sky")


def test_labels_background_threshold_and_upsampling():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, 0] = 10.0  # confident class 1 at (0, 0); elsewhere a 3-way tie (p = 1/3)
    labels = logits_to_labels(logits, bg_threshold=0.5)
    assert labels.tolist() == [[[2, 0], [0, 0]]]
    assert (logits_to_labels(logits) > 0).all()
    dense = torch.nn.functional.normalize(torch.randn(1, 4, 2, 2), dim=1)
    cls = torch.nn.functional.normalize(torch.randn(4, 3), dim=0)
    assert segment_logits(dense, cls, (8, 10)).shape == (1, 3, 8, 10)
    with pytest.raises(ValueError, match="dim"):
        segment_logits(dense, torch.randn(5, 3))


def test_segmenter_api_pictures_and_cli(tmp_path, randomize):
    model = randomize(create_model("EVA02-test")).eval()
    seg = OpenVocabSegmenter(model, get_tokenizer("EVA02-test"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8))
    result = seg.segment(image, "sky, road,car")
    assert result.labels.shape == (30, 45) and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {1, 2, 3}
    assert abs(sum(result.areas().values()) - 1.0) < 1e-6
    assert result.scores.shape == (3, 30, 45)
    png = label_image(result.labels, 3)
    png.save(tmp_path / "m.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), result.labels)  # values survive the PNG
    pic = overlay(result)
    assert pic.height >= 30 and pic.width > 45  # legend to the right

    # CLI: clear errors before any model is built
    img_path = tmp_path / "img.png"
    image.save(img_path)
    assert main(["segment", str(tmp_path / "missing.png"), "--labels", "a,b", "--model", "EVA02-test",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert main(["segment", str(img_path), "--labels", " ", "--model", "EVA02-test",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert main(["segment", str(img_path), "--labels", "a,b", "--model", "eva02_test_patch8_32",
                 "--out", str(tmp_path / "o.png")]) == 2  # a backbone has no text tower
    # a full run with the random test CLIP writes both pictures
    assert main(["segment", str(img_path), "--labels", "red,blue", "--model", "EVA02-test",
                 "--out", str(tmp_path / "out" / "mask.png"), "--bg-threshold", "0.6"]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    assert mask.shape == (30, 45) and mask.max() <= 2
    assert (tmp_path / "out" / "mask_overlay.png").is_file()


@pytest.mark.parametrize("grid,size", [((4, 6), (97, 131)), ((3, 3), (3, 3)), ((5, 2), (640, 41))])
def test_chunked_full_size_outputs_match_one_interpolation(grid, size):
    """Full-size labels / probabilities are made a few rows at a time: same result as upsampling everything."""
    torch.manual_seed(0)
    dense = torch.nn.functional.normalize(torch.randn(2, 8, *grid), dim=1)
    cls = torch.nn.functional.normalize(torch.randn(8, 4), dim=0)
    full = segment_logits(dense, cls, size)  # (2, 4, H, W): the one big F.interpolate
    low = segment_logits(dense, cls)
    small = 2 * 4 * size[1] * 3  # three rows per chunk
    rows = list(upsampled_rows(low, size, max_elements=small))
    assert [r for r, _ in rows] == list(range(0, size[0], 3))
    torch.testing.assert_close(torch.cat([c for _, c in rows], dim=2), full, atol=1e-4, rtol=1e-5)
    for bg, last in [(None, False), (0.5, False), (None, True), (0.4, True)]:
        want = logits_to_labels(full, bg, background_last=last)
        got = segment_labels(dense, cls, size, bg, background_last=last, max_elements=small)
        assert torch.equal(got, want)
        assert torch.equal(segment_labels(dense, cls, size, bg, background_last=last), got)  # chunking-invariant
    probs = segment_probs(low, size, num_classes=3, max_elements=small)
    torch.testing.assert_close(probs, full.softmax(dim=1)[:, :3], atol=1e-5, rtol=1e-4)


def test_segment_makes_no_full_size_logits(monkeypatch, randomize):
    model = randomize(create_model("EVA02-test")).eval()
    seg = OpenVocabSegmenter(model, get_tokenizer("EVA02-test"))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 410, 3), dtype=np.uint8))
    names = ["sky", "road", "car"]
    want_logits = seg.logits(image, names, background=["an empty background"])  # the old, full-size path
    want = logits_to_labels(want_logits.unsqueeze(0), 0.4, background_last=True)[0]

    interpolate, biggest = torch.nn.functional.interpolate, [0]

    def spy(*args, **kwargs):
        out = interpolate(*args, **kwargs)
        biggest[0] = max(biggest[0], out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    result = seg.segment(image, names, bg_threshold=0.4, background=["an empty background"])
    assert biggest[0] < 300 * 410  # nothing was resampled to the image's size, not even one channel
    assert result._scores is None  # probabilities are only made when read
    assert np.array_equal(result.labels, want.numpy().astype(np.uint8))
    assert torch.equal(seg.labels(image, names, bg_threshold=0.4, background=["an empty background"]),
                       want.to(torch.uint8))
    torch.testing.assert_close(result.scores, want_logits.softmax(0)[:3], atol=1e-5, rtol=1e-4)
    assert result.scores.shape == (3, 300, 410)


def test_thin_and_empty_images_get_a_bounded_grid_or_a_clear_error(randomize):
    model = randomize(create_model("EVA02-test")).eval()  # 32 px input, patch 8
    x = model_input(Image.new("RGB", (4000, 10)), model.visual)
    assert x.shape[-1] <= 8 * 32 and x.shape[-2] >= 8 and x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
    assert model_input(Image.new("RGB", (64, 48)), model.visual).shape == (1, 3, 32, 40)  # ordinary: as before
    seg = OpenVocabSegmenter(model, get_tokenizer("EVA02-test"))
    result = seg.segment(Image.new("RGB", (4000, 10), (200, 30, 30)), "red,blue")
    assert result.labels.shape == (10, 4000)
    with pytest.raises(ValueError, match="empty image"):
        model_input(Image.new("RGB", (0, 10)), model.visual)
    with pytest.raises(ValueError, match="max_aspect"):
        model_input(Image.new("RGB", (20, 10)), model.visual, max_aspect=0.5)
