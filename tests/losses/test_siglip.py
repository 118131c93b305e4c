"""SigLipLoss against the paper's formula and open_clip's SigLipLoss (one process)."""

import math

import open_clip.loss as open_clip_loss
import pytest
import torch
import torch.nn.functional as F

from openeva.losses import SigLipLoss


def _features(batch, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    return image, text


def _formula(image, text, scale, bias):
    """-sum_ij log sigmoid(z_ij * (s x_i.y_j + b)) / B with z = +1 on the diagonal, -1 elsewhere."""
    batch = image.shape[0]
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            logit = scale * float(image[i].double() @ text[j].double()) + bias
            label = 1.0 if i == j else -1.0
            total -= -math.log1p(math.exp(-label * logit))
    return total / batch


def test_equals_direct_formula():
    image, text = _features(6, 5)
    loss = SigLipLoss()(image, text, torch.tensor(10.0), torch.tensor(-10.0))
    assert loss.item() == pytest.approx(_formula(image, text, 10.0, -10.0), rel=1e-5)


@pytest.mark.parametrize("batch", [1, 9])
def test_value_and_gradients_match_open_clip(batch):
    image, text = _features(batch, 12, seed=batch)
    results = []
    for loss_fn in (SigLipLoss(), open_clip_loss.SigLipLoss()):
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        scale = torch.tensor(10.0, requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        loss = loss_fn(img, txt, scale, bias)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad, scale.grad, bias.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_output_dict_and_no_bias():
    image, text = _features(4, 8)
    out = SigLipLoss()(image, text, 5.0, None, output_dict=True)
    assert out["contrastive_loss"].item() == pytest.approx(_formula(image, text, 5.0, 0.0), rel=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        SigLipLoss()(torch.randn(4, 8), torch.randn(3, 8), 1.0, 0.0)
    with pytest.raises(ValueError, match="rank"):
        SigLipLoss(rank=3, world_size=2)
