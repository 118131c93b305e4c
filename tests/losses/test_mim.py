"""MIM losses: negative cosine feature loss, MAE pixel loss, patchify."""

import pytest
import torch
import torch.nn.functional as F

from openeva.losses import mim_cosine_loss, patchify, pixel_regression_loss, unpatchify


def test_cosine_loss_formula_and_extremes():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen)
    expected = -(F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(mim_cosine_loss(pred, target), expected)
    assert mim_cosine_loss(pred, 3 * pred).item() == pytest.approx(-1.0, abs=1e-6)
    assert mim_cosine_loss(pred, -pred).item() == pytest.approx(1.0, abs=1e-6)


def test_cosine_loss_with_a_mask_averages_over_all_masked_tokens_of_the_batch():
    """EVA-02's loss is ``-cos(lm_head(x[mask]), target[mask]).mean()``: the mean over every masked token of the
    batch, so images with more masked patches weigh more. Weighting all patches by the mask gives exactly that,
    whatever the count per image (BEiT's masks vary), and ignores what unmasked positions hold."""
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.randn(3, 8, 5, generator=gen), torch.randn(3, 8, 5, generator=gen)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, :6], mask[1, 2:3], mask[2, 1:5] = True, True, True  # 6, 1 and 4 masked tokens
    weighted = mim_cosine_loss(pred, target, mask=mask)
    torch.testing.assert_close(weighted, mim_cosine_loss(pred[mask], target[mask]))
    per_image = torch.stack([mim_cosine_loss(pred[i][mask[i]], target[i][mask[i]]) for i in range(3)]).mean()
    assert not torch.allclose(weighted, per_image)  # token-weighted, not a mean of per-image means
    noisy = torch.where(mask.unsqueeze(-1), pred, torch.randn(3, 8, 5, generator=gen))
    torch.testing.assert_close(mim_cosine_loss(noisy, target, mask=mask), weighted)
    assert mim_cosine_loss(pred, target, mask=torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="mask shape"):
        mim_cosine_loss(pred, target, mask=mask[:, :7])


def test_cosine_loss_is_fp32_for_bf16_inputs_and_differentiable():
    pred = torch.randn(5, 4, dtype=torch.bfloat16, requires_grad=True)
    loss = mim_cosine_loss(pred, torch.randn(5, 4, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    loss.backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("pred_shape,target_shape", [((4, 6), (4, 5)), ((4, 6), (3, 6)), ((6,), (6,)), ((0, 6), (0, 6))])
def test_cosine_loss_rejects_bad_shapes(pred_shape, target_shape):
    with pytest.raises(ValueError, match="mim_cosine_loss"):
        mim_cosine_loss(torch.randn(pred_shape), torch.randn(target_shape))


def test_pixel_loss_normalises_each_target_patch():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 12, generator=gen), 5 + 3 * torch.randn(2, 3, 12, generator=gen)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    expected = ((pred - (target - mean) / (var + 1e-6) ** 0.5) ** 2).mean()
    torch.testing.assert_close(pixel_regression_loss(pred, target), expected)
    torch.testing.assert_close(pixel_regression_loss(pred, target, norm_pix=False), F.mse_loss(pred, target))


def test_pixel_loss_mask_averages_masked_patches_only():
    gen = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 4, 6, generator=gen), torch.randn(2, 4, 6, generator=gen)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    expected = pixel_regression_loss(pred[mask], target[mask])
    torch.testing.assert_close(pixel_regression_loss(pred, target, mask=mask), expected)
    with pytest.raises(ValueError, match="mask shape"):
        pixel_regression_loss(pred, target, mask=mask[:, :3])
    # a mask selecting nothing: zero loss and zero gradient (refusing it would need the count on the host)
    empty = pixel_regression_loss(pred.requires_grad_(), target, mask=torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and not pred.grad.any()
    with pytest.raises(ValueError, match="pixel_regression_loss"):
        pixel_regression_loss(pred, target[..., :5])


def test_patchify_layout_and_round_trip():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)  # (B, 2 * 3, 4 * 4 * 3)
    assert patches.shape == (2, 6, 48)
    # patch (row 1, col 2) holds pixels [4:8, 8:12] as (p, p, C)
    torch.testing.assert_close(patches[:, 5], images[:, :, 4:8, 8:12].permute(0, 2, 3, 1).reshape(2, 48))
    torch.testing.assert_close(unpatchify(patches, 4, (2, 3)), images)


def test_patchify_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="B, C, H, W"):
        patchify(torch.randn(3, 8, 8), 4)
    with pytest.raises(ValueError, match="unpatchify"):
        unpatchify(torch.randn(1, 5, 48), 4, (2, 3))
