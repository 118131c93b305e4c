"""The linear probe's fast path (issue 13, item 4): hand-written gradient, subsampled and warm-started search."""

import pytest
import torch
import torch.nn.functional as F

from openeva.eval.linear_probe import (
    LinearProbeOptions, _subsample, evaluate_linear_probe, fit_logistic_regression,
)


def _mixture(n: int, dim: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + 1.5 * torch.randn(n, dim, generator=g), y


def test_fit_reaches_the_minimum_of_the_regularised_cross_entropy():
    x, y = _mixture(400)
    wd = 1e-2
    w, b = fit_logistic_regression(x, y, 4, wd)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.cross_entropy(x @ w + b, y) + 0.5 * wd * w.pow(2).sum()
    loss.backward()  # autograd's gradient of the same objective vanishes at the returned solution
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_warm_start_reaches_the_same_solution_as_a_cold_start():
    x, y = _mixture(300, seed=1)
    cold = fit_logistic_regression(x, y, 4, 1e-3)
    seed_solution = fit_logistic_regression(x, y, 4, 1e-1)
    warm = fit_logistic_regression(x, y, 4, 1e-3, init=seed_solution)
    assert torch.allclose(cold[0], warm[0], atol=1e-3) and torch.allclose(cold[1], warm[1], atol=1e-3)
    assert not torch.allclose(seed_solution[0], warm[0], atol=1e-3)  # the init was moved, not returned


def test_subsample_is_stratified_and_capped():
    labels = torch.tensor([0] * 300 + [1] * 100)
    kept = _subsample(torch.arange(400), labels, 100, seed=0)
    assert 95 <= len(kept) <= 105
    assert abs((labels[kept] == 0).float().mean().item() - 0.75) < 0.03
    assert torch.equal(_subsample(torch.arange(400), labels, None, 0), torch.arange(400))
    assert torch.equal(_subsample(torch.arange(400), labels, 1000, 0), torch.arange(400))


def test_fast_search_agrees_with_the_exhaustive_one():
    x, y = _mixture(1200, seed=2)
    tx, ty = _mixture(400, seed=2)[0], _mixture(400, seed=2)[1]
    exhaustive = evaluate_linear_probe(x, y, tx, ty, 4, LinearProbeOptions(search_samples=None, warm_start=False))
    fast = evaluate_linear_probe(x, y, tx, ty, 4, LinearProbeOptions(search_samples=300, warm_start=True))
    assert set(fast.val_acc1) == set(exhaustive.val_acc1)  # every weight decay was tried
    assert fast.num_train == exhaustive.num_train == 1200  # the refit uses every training sample
    assert abs(fast.metrics["acc1"] - exhaustive.metrics["acc1"]) < 0.03


def test_bad_search_samples_is_rejected():
    x, y = _mixture(50)
    with pytest.raises(ValueError, match="search_samples"):
        evaluate_linear_probe(x, y, x, y, 4, LinearProbeOptions(search_samples=0))
