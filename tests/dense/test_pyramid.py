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
