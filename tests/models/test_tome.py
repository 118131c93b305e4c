"""Token merging on EVA-02 / EVA-CLIP image towers: shapes, finiteness, exactness at r=0, positions, sizes, RoPE."""

import copy

import pytest
import torch

import openeva
from openeva.layers.rope import rope_angles_2d
from openeva.models.tome import (
    ToMeEVAViT, apply_tome, bipartite_soft_matching, merge_schedule, merge_tokens, rope_angles_at, tome_tokens,
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
        tokens, size, pos = backbone.forward_tome(torch.randn(4, 3, 64, 64))
    N = 1 + 64
    assert tokens.shape[1] == size.shape[1] == pos.shape[1] < N
    assert torch.allclose(size.sum(dim=1), torch.full((4, 1), float(N)))  # every patch accounted for once
    assert size[:, 0].eq(1).all()  # CLS never merged, still first
    patches = pos[:, 1:]
    assert patches.min() >= 0 and patches[..., 0].max() <= 7 and patches[..., 1].max() <= 7
    assert (patches != patches.round()).any()  # merged tokens sit between patches


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
    for bad in (-1, [1, 2]):
        with pytest.raises(ValueError, match="r"):
            merge_schedule(bad, 3)
    with pytest.raises(ValueError, match="schedule"):
        merge_schedule(2, 3, "sideways")
    with pytest.raises(TypeError, match="EVA"):
        apply_tome(torch.nn.Linear(2, 2), 2)


def test_create_model_option_and_state_dict_unchanged(tmp_path):
    plain = openeva.create_model("EVA02-test")
    merged = openeva.create_model("EVA02-test", tome_r=2)
    assert isinstance(merged.visual, ToMeEVAViT)
    assert plain.state_dict().keys() == merged.state_dict().keys()


def test_large_r_merges_down_to_cls_plus_a_few_tokens(clip):
    merged = apply_tome(copy.deepcopy(clip), 100)  # more than there are tokens: clipped per block
    with torch.no_grad():
        tokens, size, _ = merged.visual.forward_tome(torch.randn(2, 3, 32, 32))
        out = merged.encode_image(torch.randn(2, 3, 32, 32))
    assert tokens.shape[1] >= 2 and torch.isfinite(out).all()
    assert torch.allclose(size.sum(dim=1), torch.full((2, 1), 17.0))
