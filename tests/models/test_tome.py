"""Token merging on every EVAViT tower (EVA-02 with RoPE, plain ViTs, SigLIP without a class token): shapes,
finiteness, exactness at r=0, positions, sizes, RoPE, map pooling, the default r, refusals of non-ViT towers."""

import copy

import pytest
import torch

import openeva
from openeva.layers.rope import rope_angles_2d
from openeva.models.tome import (
    AUTO_KEEP, ToMeEVAViT, apply_tome, auto_r, bipartite_soft_matching, merge_schedule, merge_tokens, rope_angles_at,
    tome_tokens,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return openeva.create_model("EVA02-test").eval()


def test_shapes_kept_and_outputs_finite(clip):
    images = torch.randn(3, 3, 32, 32)
    merged = apply_tome(copy.deepcopy(clip), 3)
    with torch.no_grad():
        out, ref = merged.encode_image(images), clip.encode_image(images)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert tome_tokens(merged) == [3] * clip.visual.cfg.depth


def test_r0_equals_the_unmerged_model_exactly(clip):
    images = torch.randn(2, 3, 32, 32)
    model = copy.deepcopy(clip)
    model.visual.__class__ = ToMeEVAViT  # the merging forward itself, merging nothing
    model.visual.tome_r = [0] * model.visual.cfg.depth
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), clip.encode_image(images))
        assert torch.equal(model.visual.forward_features(images), clip.visual.forward_features(images))
    apply_tome(model, 0)  # switching off restores the plain class
    assert type(model.visual) is openeva.models.vit.EVAViT and tome_tokens(model) is None


def test_positions_inside_grid_and_sizes_sum_to_n():
    torch.manual_seed(0)
    backbone = openeva.create_model("eva02_test_patch8_32", img_size=64).eval()  # 8x8 grid, 64 patches
    apply_tome(backbone, 6)
    with torch.no_grad():
        tokens, size, pos, source = backbone.forward_tome(torch.randn(4, 3, 64, 64))
    N = 1 + 64
    assert tokens.shape[1] == size.shape[1] == pos.shape[1] < N
    assert torch.allclose(size.sum(dim=1), torch.full((4, 1), float(N)))  # every patch accounted for once
    assert size[:, 0].eq(1).all()  # CLS never merged, still first
    patches = pos[:, 1:]
    assert patches.min() >= 0 and patches[..., 0].max() <= 7 and patches[..., 1].max() <= 7
    assert (patches != patches.round()).any()  # merged tokens sit between patches
    # every token's position is the mean coordinate of the original patches it holds, its size their count
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    coords = torch.stack([rows.reshape(-1), cols.reshape(-1)], -1)  # (64, 2)
    for b in range(4):
        for j in range(1, tokens.shape[1]):
            held = (source[b, 1:] == j).nonzero().flatten()  # original patches in merged row j
            assert len(held) == size[b, j, 0]
            torch.testing.assert_close(pos[b, j], coords[held].mean(dim=0))


def test_merge_is_size_weighted_and_protects_cls():
    x = torch.tensor([[[9.0], [1.0], [2.0], [1.1], [5.0], [2.1]]])  # (1, 6, 1); token 0 = CLS
    metric = torch.cat([x, torch.ones_like(x)], dim=-1)  # (1, 6, 2)
    merge = bipartite_soft_matching(metric, r=1, protected=1)
    pos = torch.arange(6.0).view(1, 6, 1).expand(1, 6, 2)
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0], [1.0]]])
    out, new_pos, new_size = merge_tokens(merge, x, pos, size)
    assert out.shape == (1, 5, 1) and out[0, 0, 0] == 9.0  # CLS kept first, untouched
    assert torch.isclose(new_size.sum(), size.sum())
    # token 2 (value 2.0, size 3) joined its most similar B token, 5 (value 2.1): size-weighted means
    merged_at = (new_size[0, :, 0] == 4).nonzero().item()
    assert torch.isclose(out[0, merged_at, 0], torch.tensor((3 * 2.0 + 2.1) / 4))
    assert torch.allclose(new_pos[0, merged_at], torch.tensor([(3 * 2 + 5) / 4] * 2))


def test_rope_at_integer_positions_matches_the_table_and_rotates_at_fractional_ones():
    grid, hd, ref = (4, 6), 16, (16, 16)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], -1)[None]  # (1, 24, 2)
    assert torch.equal(rope_angles_at(pos, grid, hd, ref)[0], rope_angles_2d(grid, hd, ref))
    mid = rope_angles_at(torch.tensor([[[0.5, 2.5]]]), grid, hd, ref)[0, 0]
    # angles are linear in position: halfway between patches is the mean angle (a proper rotation)
    table = rope_angles_2d(grid, hd, ref)
    torch.testing.assert_close(mid, (table[2] + table[9]) / 2)  # patches (0, 2) and (1, 3)


def test_schedules_and_bad_r():
    assert merge_schedule(4, 3) == [4, 4, 4]
    dec = merge_schedule(4, 5, "decreasing")
    assert dec[0] == 8 and dec[-1] == 0 and sorted(dec, reverse=True) == dec
    assert merge_schedule([1, 0, 2], 3) == [1, 0, 2]
    for bad in (-1, [1, 2], 2.0, [1, 0.5, 2], True):
        with pytest.raises(ValueError, match="r"):
            merge_schedule(bad, 3)
    with pytest.raises(ValueError, match="schedule"):
        merge_schedule(2, 3, "sideways")
    with pytest.raises(TypeError, match="needs a ViT image tower.*Linear, not a ViT"):
        apply_tome(torch.nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="'auto'"):
        apply_tome(openeva.create_model("EVA02-test"), "fast")


def test_create_model_option_and_state_dict_unchanged(tmp_path):
    plain = openeva.create_model("EVA02-test")
    merged = openeva.create_model("EVA02-test", tome_r=2)
    assert isinstance(merged.visual, ToMeEVAViT)
    assert plain.state_dict().keys() == merged.state_dict().keys()


def test_large_r_merges_down_to_cls_plus_a_few_tokens(clip):
    merged = apply_tome(copy.deepcopy(clip), 100)  # more than there are tokens: clipped per block
    with torch.no_grad():
        tokens, size, _, _ = merged.visual.forward_tome(torch.randn(2, 3, 32, 32))
        out = merged.encode_image(torch.randn(2, 3, 32, 32))
    assert tokens.shape[1] >= 2 and torch.isfinite(out).all()
    assert torch.allclose(size.sum(dim=1), torch.full((2, 1), 17.0))


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_backbone_pooling_is_size_weighted_through_every_path(global_pool):
    """forward, and forward_head(forward_features) as evaluation and fine-tuning call it, pool the same way:
    the mean over merged tokens weighted by how many patches each holds (CLS for token pooling)."""
    torch.manual_seed(0)
    backbone = openeva.create_model("eva02_test_patch8_32", img_size=64, global_pool=global_pool,
                                    num_classes=5).eval()
    apply_tome(backbone, 6)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, size, _, _ = backbone.forward_tome(images)
        if global_pool == "avg":
            w = size[:, 1:]
            want = (tokens[:, 1:] * w).sum(dim=1) / w.sum(dim=1)  # (B, D)
        else:
            want = tokens[:, 0]
        want = backbone.fc_norm(want)
        feats = backbone.forward_features(images)
        assert feats.shape == (3, 1 + 64, tokens.shape[-1])  # one row per original token, as unmerged
        torch.testing.assert_close(backbone.forward_head(feats, pre_logits=True), want)
        torch.testing.assert_close(backbone(images), backbone.head(want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_proportional_attention_makes_a_merged_duplicate_exact(dtype):
    """Two identical tokens (same key and value) attend like one token of size 2 with log(2) added to its
    logit: the reason ToMe's size bias is right. Checked through openeva's attention (SDPA / explicit path)."""
    from openeva.layers.attention import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))  # (B, H, N, hd)
    k_dup, v_dup = torch.cat([k, k[:, :, 2:3]], dim=2), torch.cat([v, v[:, :, 2:3]], dim=2)  # token 2 twice
    size = torch.ones(2, 1, 1, 6)
    size[..., 2] = 2.0
    full = attention(q.to(dtype), k_dup.to(dtype), v_dup.to(dtype))
    merged = attention(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=size.log())
    tol = dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(merged.float(), full.float(), **tol)
    without = attention(q, k, v)  # without the bias the duplicate's weight is lost
    assert (without - full).abs().max() > 1e-3


# ------------------------------------------------------------------ every EVAViT variant: plain ViT, SigLIP
def _variant(family: str):
    """The image tower of the family's tiny CLIP (tests/helpers/tiny_towers.py) at 64 px (64 patches), random."""
    from tiny_towers import randomize, tiny_clip

    from openeva.models.vit import EVAViT

    cfg = tiny_clip(family).visual.cfg
    return randomize(EVAViT(cfg.replace(img_size=64, rope_ref_grid=(8, 8) if cfg.rope else None))).eval()


VARIANTS = ["eva", "vit", "siglip"]  # RoPE + CLS + token pool; learned positions + CLS + norm_pre; no CLS + map pool


@pytest.mark.parametrize("family", VARIANTS)
def test_every_vit_variant_r0_is_exact(family):
    """The merging forward, merging nothing, is the plain forward bit for bit (norm_pre, map pooling, no CLS)."""
    model = _variant(family)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_tokens, ref = model.forward_features(images), model(images)
        model.__class__ = ToMeEVAViT
        model.tome_r = [0] * model.cfg.depth
        assert torch.equal(model.forward_features(images), ref_tokens)
        assert torch.equal(model(images), ref)


@pytest.mark.parametrize("family", VARIANTS)
def test_every_vit_variant_merges_with_sizes_and_protection(family):
    model = apply_tome(_variant(family), 8)
    P = model.num_prefix_tokens
    assert P == (0 if family == "siglip" else 1)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, size, _, source = model.forward_tome(images)
        out = model(images)
    N = P + 64
    assert tokens.shape[1] == N - 8 * model.cfg.depth  # r tokens fewer after each block
    assert torch.allclose(size.sum(dim=1), torch.full((3, 1), float(N)))  # every patch counted once
    if P:
        assert size[:, 0].eq(1).all() and source[:, 0].eq(0).all()  # the class token never merges
    else:
        assert size.max() > 1 and source.unique().numel() == tokens.shape[1]  # no protected token: all can merge
    assert out.shape == (3, model.embed_dim if model.cfg.num_classes == 0 else model.cfg.num_classes)
    assert torch.isfinite(out).all()


def test_map_pooling_over_merged_tokens_is_proportional_attention():
    """SigLIP's attention pool reads one row per original patch: a merged token of size s counts s times, which
    is proportional attention (log s added to its logit) over the merged tokens."""
    from openeva.layers.attention import attention

    model = apply_tome(_variant("siglip"), 8)
    images = torch.randn(2, 3, 64, 64)
    pool = model.attn_pool
    with torch.no_grad():
        tokens, size, _, _ = model.forward_tome(images)
        B, N, D = tokens.shape
        H, hd = pool.num_heads, pool.head_dim
        q = pool.q(pool.latent.expand(B, -1, -1)).view(B, 1, H, hd).transpose(1, 2)
        k, v = pool.kv(tokens).view(B, N, 2, H, hd).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v, attn_mask=size.log().transpose(1, 2).unsqueeze(1)).transpose(1, 2).reshape(B, 1, D)
        x = pool.proj(x)
        want = (x + pool.mlp(pool.norm(x)))[:, 0]
        torch.testing.assert_close(model.forward_head(model.forward_features(images), pre_logits=True),
                                   model.fc_norm(want), rtol=1e-5, atol=1e-5)


def test_auto_r_keeps_a_quarter_of_the_tokens_to_the_last_block():
    assert auto_r(openeva.create_model("ViT-B-32", device="meta")) == 3  # 49 patches, 12 blocks: 13 left
    assert auto_r(openeva.create_model("ViT-B-16-SigLIP", device="meta")) == 12  # 196 patches: 52 left
    assert auto_r(openeva.create_model("EVA02-L-14", device="meta")) == 8  # 256 patches, 24 blocks: 64 left
    for family in VARIANTS:
        model = _variant(family)
        apply_tome(model)  # r="auto" is the default
        r = auto_r(model)
        assert tome_tokens(model) == [r] * model.cfg.depth and r == int(0.75 * 64 // model.cfg.depth)
        with torch.no_grad():
            tokens, _, _, _ = model.forward_tome(torch.randn(1, 3, 64, 64))
        assert tokens.shape[1] - model.num_prefix_tokens >= 64 * AUTO_KEEP
    with pytest.raises(ValueError, match="keep"):
        auto_r(_variant("vit"), keep=0.0)


def test_create_model_auto_r_on_a_plain_vit():
    model = openeva.create_model("ViT-B-32", tome_r="auto", depth=2, embed_dim=64, num_heads=2, mlp_hidden=128,
                                 img_size=128)  # 16 patches, 2 blocks: r = 6
    assert tome_tokens(model) == [6, 6]
    with torch.no_grad():
        assert torch.isfinite(model.encode_image(torch.randn(2, 3, 128, 128))).all()


def test_timm_towers_are_refused_with_family_and_reason():
    model = openeva.create_model("convnext-test")
    with pytest.raises(TypeError, match=r"timm's test_convnext \(ConvNeXt\), not a ViT"):
        apply_tome(model, 2)
    with pytest.raises(TypeError, match="not a ViT"):
        apply_tome(model)  # "auto" refuses the same way


def _timm_vit_clip(timm_name="test_vit", size=160):
    from tiny_towers import randomize

    from openeva.models.clip import CLIP, CLIPConfig
    from openeva.models.text import TextConfig
    from openeva.models.timm_tower import TimmTowerConfig

    pytest.importorskip("timm")
    vision = TimmTowerConfig(timm_name=timm_name, embed_dim=32, img_size=size, pool="", proj="linear")
    return randomize(CLIP(CLIPConfig(embed_dim=32, vision=vision, text=TextConfig(64, 2, 1, 32)))).eval()


def test_timm_vit_towers_merge_as_the_openeva_vits_do():
    """A timm VisionTransformer trunk (test_vit: class token, 100 patches, 6 blocks): r=0 through the merging
    forward is exact, "auto" merges 12 per block, the class token is kept, sizes add up, "off" restores timm's class."""
    from openeva.models import tome_timm

    model = _timm_vit_clip()
    trunk = model.visual.trunk
    plain_cls = type(trunk)
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        ref = model.encode_image(images)
        tome_timm.apply(trunk, [0] * len(trunk.blocks))
        assert torch.equal(model.encode_image(images), ref)
        apply_tome(model, "auto")
        assert tome_tokens(model) == [12] * 6 and auto_r(model) == int(0.75 * 100 // 6)
        tokens, size, source = trunk.forward_tome(images)
        out = model.encode_image(images)
    assert tokens.shape[1] == 101 - 6 * 12 and torch.allclose(size.sum(dim=1), torch.full((2, 1), 101.0))
    assert size[:, 0].eq(1).all() and source[:, 0].eq(0).all()
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    apply_tome(model, 0)
    assert type(trunk) is plain_cls and tome_tokens(model) is None
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), ref)
