"""Parity with timm's ``Eva``: random timm weights converted to openeva give the same features and outputs.

Covers every published backbone size (large is slow), another resolution (square and not), a classifier head,
the fine-tuned 336/448 rows, the intermediate feature maps, and the tiny test models' towers (sub-LN SwiGLU,
packed SwiGLU, EVA-CLIP tower, post-norm GELU) including their gradients.
"""

from __future__ import annotations

import pytest
import torch

import openeva
from openeva.checkpoints.convert import detect_format, to_openeva
from openeva.models.vit import EVAViT, ViTConfig

timm = pytest.importorskip("timm")

TOL = 1e-4  # relative difference in fp32


def _converted(ref) -> dict[str, torch.Tensor]:
    sd = ref.state_dict()
    return to_openeva(sd, detect_format(sd), is_clip=False)


def _ours_from(ref, name: str, **kwargs) -> EVAViT:
    """openeva's ``name`` built on the meta device and given ``ref``'s converted weights (no init cost)."""
    with torch.device("meta"):
        ours = openeva.create_model(name, device="meta", **kwargs)
    ours.load_state_dict(_converted(ref), strict=True, assign=True)
    return ours.eval()


def _timm(name: str, randomize, **kwargs):
    torch.manual_seed(0)
    return randomize(timm.create_model(name, **kwargs)).eval()


def _images(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[
    "eva02_tiny_patch14_224", "eva02_small_patch14_224", "eva02_base_patch14_224",
    pytest.param("eva02_large_patch14_224", marks=pytest.mark.slow),
])
def backbone_pair(request, randomize):
    name = request.param
    ref = _timm(name, randomize, num_classes=0)
    return name, ref, _ours_from(ref, name)


@torch.no_grad()
def test_backbone_features_pooled_output_and_intermediates_match_timm(backbone_pair, relative_difference):
    name, ref, ours = backbone_pair
    x = _images(1, 3, 224, 224)
    wanted = [0, ours.cfg.depth // 2, ours.cfg.depth - 1]
    f_ref, maps_ref = ref.forward_intermediates(x, indices=wanted, output_fmt="NCHW")  # (final tokens, maps)
    f_ours = ours.forward_features(x)
    assert f_ours.shape == f_ref.shape == (1, 257, ours.embed_dim)
    assert relative_difference(f_ours, f_ref) < TOL
    p_ref, p_ours = ref.forward_head(f_ref, pre_logits=True), ours.forward_head(f_ours, pre_logits=True)
    assert relative_difference(p_ours, p_ref) < TOL

    maps = ours.forward_intermediates(x, indices=wanted)
    assert [m.shape for m in maps] == [t.shape for t in maps_ref] == [(1, ours.embed_dim, 16, 16)] * 3
    for m, t in zip(maps, maps_ref):
        assert relative_difference(m, t) < TOL


@pytest.mark.parametrize("size", [(168, 168), (112, 168), (196, 126)])
@torch.no_grad()
def test_other_resolutions_match_timm(size, randomize, relative_difference):
    """timm ``img_size=(h, w)`` vs ours ``img_size=``: RoPE rescaled to the 16x16 pretraining grid, both axes."""
    name = "eva02_tiny_patch14_224"
    ref = _timm(name, randomize, num_classes=0, img_size=size)
    ours = _ours_from(ref, name, img_size=size)
    x = _images(1, 3, *size)
    assert relative_difference(ours.forward_features(x), ref.forward_features(x)) < TOL
    assert relative_difference(ours(x), ref(x)) < TOL


@torch.no_grad()
def test_224_checkpoint_loaded_at_another_resolution_matches_timm(tmp_path, randomize, relative_difference):
    """Ours resamples pos_embed bicubically without antialiasing (EVA's own conversion); timm does the same
    with ``antialias=False``, and the resampled models agree."""
    from timm.layers import resample_abs_pos_embed

    name, size = "eva02_tiny_patch14_224", (112, 168)
    ref224 = _timm(name, randomize, num_classes=0)
    torch.save(ref224.state_dict(), tmp_path / "tiny.pth")
    ours = openeva.create_model(name, pretrained=str(tmp_path / "tiny.pth"), img_size=size).eval()

    sd = ref224.state_dict()
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=[8, 12], old_size=[16, 16],
                                             num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(ours.pos_embed.detach(), sd["pos_embed"], rtol=1e-5, atol=1e-6)
    ref = timm.create_model(name, num_classes=0, img_size=size).eval()
    ref.load_state_dict(sd)
    x = _images(1, 3, *size)
    assert relative_difference(ours(x), ref(x)) < TOL


@torch.no_grad()
def test_classifier_head_matches_timm(randomize, relative_difference):
    name = "eva02_tiny_patch14_224"
    ref = _timm(name, randomize, num_classes=10)
    ours = _ours_from(ref, name, num_classes=10)
    x = _images(1, 3, 224, 224)
    out = ours(x)
    assert out.shape == (1, 10)
    assert relative_difference(out, ref(x)) < TOL


FINETUNE_ROWS = ["eva02_tiny_patch14_336", "eva02_small_patch14_336", "eva02_base_patch14_448",
                 "eva02_large_patch14_448"]


@pytest.mark.parametrize("name", FINETUNE_ROWS)
def test_finetune_rows_have_timms_shapes(name):
    """Same resolution, head and every converted tensor shape as timm's model of the same name (meta device)."""
    spec = openeva.get_model_spec(name)
    with torch.device("meta"):
        ref = timm.create_model(name)  # timm's default: the 1000-class head
        ours = openeva.create_model(name, device="meta")
    assert ours.cfg.img_size == tuple(ref.patch_embed.img_size) == spec.image_size
    assert ours.num_classes == ref.num_classes == 1000
    theirs = {k: tuple(v.shape) for k, v in _converted(ref).items()}
    assert theirs == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", [
    "eva02_tiny_patch14_336", pytest.param("eva02_base_patch14_448", marks=pytest.mark.slow),
])
@torch.no_grad()
def test_finetune_rows_match_timm_outputs(name, randomize, relative_difference):
    ref = _timm(name, randomize)
    ours = _ours_from(ref, name)
    size = ours.cfg.img_size
    x = _images(1, 3, *size)
    assert relative_difference(ours(x), ref(x)) < TOL


# --------------------------------------------------------------------------- the tiny test models' towers
def _tower(name: str) -> EVAViT:
    with torch.device("meta"):
        model = openeva.create_model(name, device="meta")
    return model.visual if hasattr(model, "visual") else model


@pytest.mark.parametrize("name", ["eva02_test_patch8_32", "eva02_test_packed_patch8_32", "EVA02-test",
                                  "EVA02-E-test"])
def test_tiny_towers_match_timm_forward_and_gradients(name, timm_twin, relative_difference):
    ref = timm_twin(name)
    ours = _tower(name)
    ours.load_state_dict(_converted(ref), strict=True, assign=True)
    ours.eval()
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_difference(ours.forward_features(x), ref.forward_features(x)) < TOL
    out_ours, out_ref = ours(x), ref(x)
    assert relative_difference(out_ours, out_ref) < TOL
    out_ours.square().mean().backward()
    out_ref.square().mean().backward()
    grads_ref = to_openeva({n: p.grad for n, p in ref.named_parameters()}, "timm", is_clip=False)
    assert set(grads_ref) == {n for n, _ in ours.named_parameters()}
    for n, p in ours.named_parameters():
        assert relative_difference(p.grad, grads_ref[n]) < 1e-4, n


def test_eva01_giant_style_tower_matches_timm(randomize, relative_difference):
    """EVA01-g's layout (pre-norm GELU MLP, no RoPE, fused qkv) at toy size, built from a config."""
    from timm.models.eva import Eva

    cfg = ViTConfig(embed_dim=64, depth=2, num_heads=2, mlp_hidden=256, mlp="gelu", rope=False, rope_ref_grid=None,
                    patch_size=8, img_size=32, global_pool="token", num_classes=32)
    torch.manual_seed(0)
    ref = randomize(Eva(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0,
                        global_pool="token", num_classes=32)).eval()
    ours = EVAViT(cfg).eval()
    ours.load_state_dict(_converted(ref), strict=True)
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_difference(ours(x), ref(x)) < TOL
