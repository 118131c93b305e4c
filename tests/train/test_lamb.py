"""openeva's LAMB against DeepSpeed's FusedLamb formula (the optimizer EVA-CLIP trains with), on golden values.

The expected numbers below are worked out by hand from the formula in :class:`openeva.train.optim.Lamb` with
lr 0.1, betas (0.9, 0.98), eps 1e-6, first step: m = 0.1 g, v = 0.02 g^2, so every element of the Adam
direction is 0.1 g / (0.1414214 |g| + 1e-6) ~ +-0.70711 and the bias-corrected step size is
0.1 * sqrt(0.02) / 0.1 = 0.1414214.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist

from openeva.train.optim import Lamb, create_optimizer

LR, BETAS, EPS = 0.1, (0.9, 0.98), 1e-6

# name: (param, grad, weight decay, param after one step, trust ratio before the clamp)
GOLDEN = {
    # ||p|| = 500, ||u|| = 1.0000 -> ratio 500, clamped to 10: p -= 0.1414214 * 10 * 0.707102 * sign(g)
    "ratio_clamped_to_10": ([300.0, 400.0], [1.0, -1.0], 0.0, [299.000007, 400.999993], 500.0035),
    # ||p|| = 0.005 -> ratio 0.005, clamped to 0.01: p -= 0.1414214 * 0.01 * 0.707104 * sign(g)
    "ratio_clamped_to_0.01": ([0.003, 0.004], [2.0, -2.0], 0.0, [0.002000004, 0.004999996], 0.005000018),
    # ||p|| = 0 -> ratio 1: p = -0.1414214 * (0.707100, 0.707104, 0.707105)
    "zero_weights_ratio_1": ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], 0.0, [-0.0999993, -0.0999996, -0.0999998], None),
    # decay joins the direction: u = 0.707097 + 0.1 p = (0.767097, 0.787097), ||u|| = 1.099071, ratio 0.909859
    "decay_in_the_direction": ([0.6, 0.8], [0.5, 0.5], 0.1, [0.5012950, 0.6987215], 0.909859),
    # a 0-dim tensor without decay (a logit scale) is adapted too: ratio 4.605170 / 0.707095 = 6.512848
    "scalar_without_decay": (4.605170186, 0.3, 0.0, 3.953901, 6.512848),
    # zero gradient, no decay: ||u|| = 0 -> ratio 1 and a zero step
    "zero_gradient": ([1.0, 2.0], [0.0, 0.0], 0.0, [1.0, 2.0], None),
}


def _params_and_optimizer():
    params = {k: torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for k, (p, *_rest) in GOLDEN.items()}
    for k, (_, g, *_rest) in GOLDEN.items():
        params[k].grad = torch.tensor(g, dtype=torch.float32)
    groups = [{"params": [params[k]], "weight_decay": wd} for k, (_, _, wd, *_rest) in GOLDEN.items()]
    return params, Lamb(groups, lr=LR, betas=BETAS, eps=EPS)


def test_one_step_matches_the_hand_computed_values_at_both_ends_of_the_clamp():
    ratios = [r for *_, r in GOLDEN.values() if r is not None]
    assert max(ratios) > 10 and min(ratios) < 0.01  # the cases reach past both ends of [0.01, 10]
    params, opt = _params_and_optimizer()
    opt.step()
    for name, (*_, expected, _ratio) in GOLDEN.items():
        torch.testing.assert_close(params[name].detach(), torch.tensor(expected), rtol=2e-6, atol=2e-7,
                                   msg=name)


def test_moments_are_the_raw_gradients_no_second_clip():
    """Global gradient norm 3 (> 1, where timm's and apex's LAMB clip again): the first moment is (1 - b1) g
    exactly, the second (1 - b2) g^2; the run's optim.grad_clip is the only clip."""
    p = torch.nn.Parameter(torch.ones(9))
    p.grad = torch.full((9,), 1.0)  # ||g|| = 3
    opt = create_optimizer([{"params": [p], "param_names": ["p"]}], "lamb", lr=LR, betas=BETAS, eps=EPS,
                           weight_decay=0.0)
    assert isinstance(opt, Lamb)
    opt.step()
    state = opt.state[p]
    torch.testing.assert_close(state["exp_avg"], torch.full((9,), 0.1))
    torch.testing.assert_close(state["exp_avg_sq"], torch.full((9,), 0.02))
    assert float(state["step"]) == 1.0 and state["step"].device.type == "cpu"


def test_bias_correction_is_folded_into_the_step_size():
    """Second step with the same gradient 1 on a unit weight: m = 0.19, v = 0.0396, u = 0.19 / (0.198997 + 1e-6)
    = 0.954782 (one element: ||p|| / ||u|| = p / u), step size 0.1 * sqrt(1 - 0.98^2) / (1 - 0.9^2) = 0.104735."""
    p = torch.nn.Parameter(torch.ones(1))
    opt = Lamb([p], lr=LR, betas=BETAS, eps=EPS)
    p.grad = torch.ones(1)
    opt.step()  # ratio 1 / 0.707102 = 1.414210, p = 1 - 0.1414214 * 1.414210 * 0.707102 = 0.8585786
    torch.testing.assert_close(p.detach(), torch.tensor([0.8585786]), rtol=2e-6, atol=0)
    p.grad = torch.ones(1)
    opt.step()  # ratio 0.8585786 / 0.954782, p -= 0.104735 * ratio * 0.954782 = 0.104735 * 0.8585786
    torch.testing.assert_close(p.detach(), torch.tensor([0.8585786 * (1 - 0.104735)]), rtol=2e-6, atol=0)


def test_state_dict_round_trip_continues_identically():
    a = torch.nn.Parameter(torch.tensor([0.5, -1.5, 2.0]))
    opt = Lamb([a], lr=LR, betas=BETAS, eps=EPS, weight_decay=0.05)
    for _ in range(2):
        a.grad = torch.tensor([0.3, 0.1, -0.2])
        opt.step()
    b = torch.nn.Parameter(a.detach().clone())
    resumed = Lamb([b], lr=LR, betas=BETAS, eps=EPS, weight_decay=0.05)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict shares the tensors)
    for p, o in ((a, opt), (b, resumed)):
        p.grad = torch.tensor([0.3, 0.1, -0.2])
        o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"),
                                             ({"eps": 0.0}, "eps"), ({"weight_decay": -0.1}, "weight_decay"),
                                             ({"min_coeff": 0.0}, "min_coeff")])
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lamb([torch.nn.Parameter(torch.ones(2))], **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dtensor_step(rank: int, world_size: int, port: int) -> dict[str, torch.Tensor]:
    """One Lamb step on the GOLDEN tensors as DTensors (vectors sharded on dim 0, the 0-dim one replicated)
    over a ``world_size`` gloo mesh; returns the full updated tensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        params, groups = {}, []
        for name, (p, g, wd, *_rest) in GOLDEN.items():
            p, g = torch.tensor(p, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
            place = [Shard(0)] if p.ndim else [Replicate()]
            params[name] = torch.nn.Parameter(distribute_tensor(p, mesh, place))
            params[name].grad = distribute_tensor(g, mesh, place)
            groups.append({"params": [params[name]], "weight_decay": wd})
        Lamb(groups, lr=LR, betas=BETAS, eps=EPS).step()
        return {k: v.detach().full_tensor() for k, v in params.items()}
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    result = _dtensor_step(rank, world_size, port)
    if rank == 0:
        torch.save(result, out)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_dtensor_parameters_take_the_same_step():
    """Plain tensor ops only: the same update on DTensor parameters (FSDP2's), no host read of device values."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    result = _dtensor_step(0, 1, _free_port())
    for name, (*_, expected, _ratio) in GOLDEN.items():
        torch.testing.assert_close(result[name], torch.tensor(expected), rtol=2e-6, atol=2e-7, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_sharded_over_two_processes_the_trust_ratio_is_per_tensor(tmp_path):
    """Each process holds half of each vector; the ratio uses the whole tensor's norms (not per shard, as
    ZeRO-1's per-slice ratio would), so the step equals the one-process golden values."""
    out = str(tmp_path / "result.pt")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    result = torch.load(out)
    for name, (*_, expected, _ratio) in GOLDEN.items():
        torch.testing.assert_close(result[name], torch.tensor(expected), rtol=2e-6, atol=2e-7, msg=name)
