"""ViTDet simple feature pyramid: the p2..p5 contract, window attention's locality, errors."""

from __future__ import annotations

import pytest
import torch

from openeva.dense.pyramid import SimpleFeaturePyramid
from openeva.factory import create_model
from openeva.models.vit import EVAViT, ViTConfig


@pytest.mark.parametrize("patch,size", [(8, 64), (16, 64), (4, 32)])
def test_levels_strides_and_shapes(patch, size):
    vit = EVAViT(ViTConfig(embed_dim=32, depth=2, num_heads=2, mlp_hidden=64, patch_size=patch, img_size=size))
    fpn = SimpleFeaturePyramid(vit, out_channels=24)
    out = fpn(torch.randn(2, 3, size, size + 2 * patch))  # non-square works too
    assert list(out) == ["p2", "p3", "p4", "p5"]
    for name, spec in fpn.output_shape().items():
        s = spec["stride"]
        assert out[name].shape == (2, 24, size // s, (size + 2 * patch) // s)
    assert [v["stride"] for v in fpn.output_shape().values()] == [4, 8, 16, 32]
    out["p2"].mean().backward()
    assert vit.blocks[0].attn.qkv.weight.grad is not None  # the backbone is trained through the pyramid


def test_window_attention_is_local_and_global_blocks_mix(randomize):
    vit = randomize(create_model("eva02_test_patch8_32", img_size=64)).eval()  # 8x8 grid
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :8, :8] += 5.0  # change one patch in the top-left 4x4 window
    local = SimpleFeaturePyramid(vit, 16, window_size=4)
    with torch.no_grad():
        a, b = local.backbone_map(x), local.backbone_map(y)
    changed = (a - b).abs().amax(dim=1)[0] > 1e-5  # (8, 8)
    assert changed[:4, :4].any() and not changed[4:, :].any() and not changed[:, 4:].any()
    mixed = SimpleFeaturePyramid(vit, 16, window_size=4, global_blocks=(1,))
    with torch.no_grad():
        c, d = mixed.backbone_map(x), mixed.backbone_map(y)
    assert ((c - d).abs().amax(dim=1)[0] > 1e-5)[4:, 4:].any()  # the global block carries it everywhere
    assert mixed(x)["p5"].shape == (1, 16, 2, 2)


def test_bad_pyramid_options():
    vit = create_model("eva02_test_patch8_32")
    with pytest.raises(ValueError, match="stride"):
        SimpleFeaturePyramid(vit, strides=(4, 12))
    with pytest.raises(ValueError, match="window_size"):
        SimpleFeaturePyramid(vit, window_size=0)
    with pytest.raises(ValueError, match="global_blocks"):
        SimpleFeaturePyramid(vit, window_size=2, global_blocks=(5,))


def test_output_shape_is_shapespec_like_and_size_divisibility():
    vit = create_model("eva02_test_patch8_32")
    fpn = SimpleFeaturePyramid(vit, out_channels=24)
    specs = fpn.output_shape()
    assert [(k, s.channels, s.stride) for k, s in specs.items()] == [
        ("p2", 24, 4), ("p3", 24, 8), ("p4", 24, 16), ("p5", 24, 32)]  # detectron2 reads attributes
    assert specs["p3"]["stride"] == 8 and specs["p3"]["channels"] == 24  # the dict form still works
    with pytest.raises(KeyError):
        specs["p3"]["bogus"]
    with pytest.raises(AttributeError):  # frozen, like detectron2's namedtuple
        specs["p3"].stride = 4
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    assert SimpleFeaturePyramid(vit, strides=(4, 8, 16)).size_divisibility == 16


@pytest.mark.parametrize("size", [(224, 448), (224, 224), (238, 252)])
def test_patch14_backbone_reaches_strides_4_to_32(size):
    """EVA-02's patch 14 is not a power of 2: the map is resampled to the stride-16 grid before the deconvs."""
    vit = create_model("eva02_test_patch8_32", patch_size=14, img_size=56)  # a patch-14 tower (test sizes)
    fpn = SimpleFeaturePyramid(vit, out_channels=16)
    assert fpn.map_stride == 16 and fpn.size_divisibility == 224
    H, W = size
    out = fpn(torch.randn(1, 3, H, W))
    assert [(k, s.stride) for k, s in fpn.output_shape().items()] == [("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)]
    g = (round(H / 16), round(W / 16))  # 238 x 252 (17 x 18 patches) -> a 15 x 16 stride-16 grid
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (4 * g[0], 4 * g[1]), "p3": (2 * g[0], 2 * g[1]), "p4": g, "p5": (g[0] // 2, g[1] // 2)}
    if H % 224 == 0 and W % 224 == 0:  # inputs padded to size_divisibility: exactly H / s x W / s everywhere
        for k, s in fpn.output_shape().items():
            assert out[k].shape == (1, 16, H // s.stride, W // s.stride)
    out["p2"].mean().backward()
    assert vit.patch_embed.proj.weight.grad is not None  # trained through the resampling


def test_readme_patch14_base_builds_a_segmentation_model():
    """README: ``openeva train segment_tiny model.name=eva02_base_patch14_224``; shapes only (meta tensors)."""
    from openeva.train.segmentation_task import SegmentationModel

    vit = create_model("eva02_base_patch14_224", device="meta")
    model = SegmentationModel(vit, num_classes=7).to("meta")
    feats = model.pyramid(torch.empty(2, 3, 224, 224, device="meta"))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "p2": (2, 64, 56, 56), "p3": (2, 64, 28, 28), "p4": (2, 64, 14, 14), "p5": (2, 64, 7, 7)}
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 7, 224, 224)


@pytest.mark.parametrize("window_size", [None, 2])
def test_train_mode_with_patch_dropout_keeps_every_patch(window_size):
    vit = create_model("eva02_test_patch8_32", img_size=64, force_patch_dropout=0.5)
    assert vit.cfg.patch_drop_rate == 0.5
    fpn = SimpleFeaturePyramid(vit, 16, window_size=window_size, global_blocks=(1,) if window_size else ())
    x = torch.randn(2, 3, 64, 64)
    out = fpn.train()(x)  # patch dropout would leave fewer tokens than the grid (a crash at .view)
    assert out["p2"].shape == (2, 16, 16, 16) and vit.training  # the ViT's own flag is restored
    with torch.no_grad():
        torch.testing.assert_close(fpn.train().backbone_map(x), fpn.eval().backbone_map(x))  # nothing dropped
