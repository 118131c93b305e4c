"""Tiled (Inf-CL) loss: equal to the dense loss in value and gradients, without B x B saved tensors."""

import pytest
import torch
import torch.nn.functional as F

from openeva.losses import ClipLoss, tiled_clip_loss, tiled_cross_entropy, tiled_logsumexp


def _features(batch, dim, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1).to(dtype)
    text = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1).to(dtype)
    return image, text


def _loss_and_grads(loss_fn, image, text, scale_value=14.28):
    img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(scale_value, requires_grad=True)
    loss = loss_fn(img, txt, scale)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, scale.grad


@pytest.mark.parametrize(
    "batch,dim,tile",
    [(1, 4, 4), (7, 5, 3), (33, 16, 8), (64, 32, 64), (50, 8, 7), (10, 4, 100), (96, 24, 32)],
)
def test_tiled_equals_plain_value_and_gradients(batch, dim, tile):
    image, text = _features(batch, dim, seed=batch + tile)
    plain = _loss_and_grads(ClipLoss(), image, text)
    tiled = _loss_and_grads(ClipLoss(tiled=True, tile_size=tile), image, text)
    for name, ours, ref in zip(("loss", "image grad", "text grad", "scale grad"), tiled, plain):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5, msg=name)


def test_tiled_logsumexp_rectangular_both_directions():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(13, 6, generator=gen), torch.randn(9, 6, generator=gen)
    rows, cols = tiled_logsumexp(q, k, 3.0, tile_size=4, both_directions=True)
    logits = 3.0 * q @ k.T
    torch.testing.assert_close(rows, torch.logsumexp(logits, dim=1))
    torch.testing.assert_close(cols, torch.logsumexp(logits, dim=0))
    rows_only, none = tiled_logsumexp(q, k, 3.0, tile_size=4)
    assert none is None
    torch.testing.assert_close(rows_only, rows)


def test_tiled_logsumexp_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)

    def both(q, k, scale):
        rows, cols = tiled_logsumexp(q, k, scale, tile_size=2, both_directions=True)
        return rows.double(), cols.double()

    # Statistics are fp32 by design, so the finite differences need fp32-sized steps and tolerances.
    assert torch.autograd.gradcheck(both, (q, k, scale), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_tiled_cross_entropy_with_offset_equals_dense():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(4, 8, generator=gen), torch.randn(12, 8, generator=gen)
    dense = F.cross_entropy(5.0 * q @ k.T, torch.arange(4, 8))
    torch.testing.assert_close(tiled_cross_entropy(q, k, 5.0, offset=4, tile_size=5), dense)
    with pytest.raises(ValueError, match="offset"):
        tiled_cross_entropy(q, k, 5.0, offset=10)


def test_large_logits_stay_finite_and_exact():
    gen = torch.Generator().manual_seed(4)
    image, text = 10 * torch.randn(20, 8, generator=gen), 10 * torch.randn(20, 8, generator=gen)
    plain = ClipLoss()(image, text, torch.tensor(100.0))
    tiled = tiled_clip_loss(image, text, torch.tensor(100.0), tile_size=6)
    assert torch.isfinite(tiled)
    torch.testing.assert_close(tiled, plain, rtol=1e-5, atol=1e-3)


def test_no_batch_by_batch_tensor_is_saved_for_backward():
    batch, dim = 256, 8
    image, text = _features(batch, dim)
    image.requires_grad_()
    text.requires_grad_()

    def largest_saved(loss_fn):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(image, text, torch.tensor(10.0, requires_grad=True)).backward()
        return max(sizes)

    assert largest_saved(ClipLoss()) >= batch * batch  # the dense loss keeps its logits
    assert largest_saved(ClipLoss(tiled=True, tile_size=32)) <= batch * dim


def test_bf16_autocast_runs_and_stays_close():
    image, text = _features(40, 16)
    ref = ClipLoss()(image, text, torch.tensor(10.0))
    img = image.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ClipLoss(tiled=True, tile_size=16)(img, text, torch.tensor(10.0))
    loss.backward()
    assert loss.dtype == torch.float32 and img.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)


def test_tiled_rejects_bad_inputs():
    with pytest.raises(ValueError, match="tile_size"):
        tiled_logsumexp(torch.randn(3, 2), torch.randn(3, 2), 1.0, tile_size=0)
    with pytest.raises(ValueError, match="dims"):
        tiled_logsumexp(torch.randn(3, 2), torch.randn(3, 4), 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        tiled_logsumexp(torch.randn(3, 2), torch.randn(3, 2), torch.ones(2))
