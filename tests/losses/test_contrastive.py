"""ClipLoss (dense mode) against a hand-computed cross-entropy and open_clip's ClipLoss."""

import math

import open_clip.loss as open_clip_loss
import pytest
import torch
import torch.nn.functional as F

from openeva.losses import ClipLoss


def _features(batch, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    return image, text


def _hand_cross_entropy(image, text, scale):
    """Symmetric CLIP loss written out with explicit sums, in float64."""
    image, text = image.double(), text.double()
    batch = image.shape[0]
    sims = [[scale * float(image[i] @ text[j]) for j in range(batch)] for i in range(batch)]
    image_to_text = sum(math.log(sum(math.exp(v) for v in sims[i])) - sims[i][i] for i in range(batch)) / batch
    text_to_image = sum(
        math.log(sum(math.exp(sims[i][j]) for i in range(batch))) - sims[j][j] for j in range(batch)
    ) / batch
    return (image_to_text + text_to_image) / 2


def test_plain_loss_equals_hand_computed_cross_entropy():
    image, text = _features(6, 5)
    loss = ClipLoss()(image, text, torch.tensor(10.0))
    assert loss.item() == pytest.approx(_hand_cross_entropy(image, text, 10.0), rel=1e-5)


@pytest.mark.parametrize("batch,dim", [(1, 4), (8, 16), (31, 12)])
def test_value_and_gradients_match_open_clip(batch, dim):
    image, text = _features(batch, dim, seed=batch)
    results = []
    for loss_fn in (ClipLoss(), open_clip_loss.ClipLoss()):
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        scale = torch.tensor(14.28, requires_grad=True)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad, scale.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_output_dict_and_python_float_scale():
    image, text = _features(4, 8)
    out = ClipLoss()(image, text, 20.0, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    torch.testing.assert_close(out["contrastive_loss"], ClipLoss()(image, text, torch.tensor(20.0)))


def test_logit_bias_does_not_change_softmax_loss():
    image, text = _features(5, 8)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(ClipLoss()(image, text, scale, torch.tensor(-3.0)), ClipLoss()(image, text, scale))


def test_cached_labels_follow_batch_size_changes():
    loss_fn = ClipLoss(cache_labels=True)
    for batch in (6, 3, 6):
        image, text = _features(batch, 4, seed=batch)
        expected = open_clip_loss.ClipLoss()(image, text, torch.tensor(5.0))
        torch.testing.assert_close(loss_fn(image, text, torch.tensor(5.0)), expected)


def test_perfect_alignment_gives_near_zero_loss():
    eye = torch.eye(8)
    assert ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-6


@pytest.mark.parametrize(
    "image_shape,text_shape",
    [((4, 8), (4, 6)), ((4, 8), (5, 8)), ((4, 8, 1), (4, 8, 1)), ((0, 8), (0, 8))],
)
def test_bad_feature_shapes_raise(image_shape, text_shape):
    with pytest.raises(ValueError, match="features|batch"):
        ClipLoss()(torch.randn(image_shape), torch.randn(text_shape), torch.tensor(1.0))


@pytest.mark.parametrize("kwargs", [dict(world_size=0), dict(rank=2, world_size=2), dict(rank=-1), dict(tile_size=0)])
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ClipLoss(**kwargs)


def test_world_size_without_process_group_raises():
    if torch.distributed.is_initialized():
        pytest.skip("another test left a process group initialized")
    image, text = _features(4, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        ClipLoss(rank=0, world_size=2)(image, text, torch.tensor(1.0))
