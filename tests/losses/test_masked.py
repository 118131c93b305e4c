"""Padding rows of a fixed-shape batch (``valid`` False) are left out of every contrastive loss: the loss and the
gradients equal those of the valid rows alone, and padding rows get zero gradient."""

import pytest
import torch
import torch.nn.functional as F

from openeva.losses import ClipLoss, SigLipLoss
from openeva.losses.tiled import tiled_logsumexp

VALID = torch.tensor([True, False, True, True, False, True, True])


def _features(seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(len(VALID), 8, generator=gen), dim=-1)
    text = F.normalize(torch.randn(len(VALID), 8, generator=gen), dim=-1)
    return image, text


def _grads(loss_fn, image, text, *extra, **kw):
    img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    loss = loss_fn(img, txt, scale, *extra, **kw)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, scale.grad


LOSSES = {"clip": lambda: ClipLoss(), "tiled": lambda: ClipLoss(tiled=True, tile_size=3),
          "siglip": lambda: SigLipLoss()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_rows_are_left_out(name):
    image, text = _features()
    extra = (torch.tensor(-3.0),) if name == "siglip" else ()
    masked = _grads(LOSSES[name](), image, text, *extra, valid=VALID)
    alone = _grads(LOSSES[name](), image[VALID], text[VALID], *extra)
    torch.testing.assert_close(masked[0], alone[0])
    for got, ref in zip(masked[1:3], alone[1:3]):
        torch.testing.assert_close(got[VALID], ref)
        assert torch.all(got[~VALID] == 0)
    torch.testing.assert_close(masked[3], alone[3])


def test_all_valid_mask_changes_nothing():
    image, text = _features(1)
    for name, make in LOSSES.items():
        extra = (torch.tensor(-3.0),) if name == "siglip" else ()
        a, b = _grads(make(), image, text, *extra), _grads(make(), image, text, *extra,
                                                           valid=torch.ones(len(VALID), dtype=torch.bool))
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, msg=name)


def test_tiled_logsumexp_masks_both_sides_together():
    image, text = _features(2)
    with pytest.raises(ValueError, match="together"):
        tiled_logsumexp(image, text, 3.0, row_valid=VALID)
    with pytest.raises(ValueError, match="bool"):
        ClipLoss()(image, text, 3.0, valid=VALID.float())
