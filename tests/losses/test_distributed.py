"""Two-process (gloo, CPU) checks of the gathered losses against the one-process loss over the whole batch.

The two ranks run this file as a script (``python test_distributed.py RANK STORE OUT``) so the workers do not
depend on how pytest imported the test module; they compute every loss configuration once and save the
values and gradients, which the tests below compare.

Gradient convention (open_clip's): the backward of a gather-with-grad sums the gradients every process
computed for a rank's features, so with gather-with-grad a rank's local features get ``world_size`` times the
gradient of the global loss (DDP's averaging divides it back).
"""

import itertools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from openeva.losses import ClipLoss, SigLipLoss

WORLD_SIZE = 2
LOCAL_BATCH = 5
DIM = 6
SCALE = 9.0
BIAS = -4.0
CLIP_CONFIGS = list(itertools.product((False, True), repeat=3))  # (local_loss, gather_with_grad, tiled)
# padding rows of each rank's fixed-shape batch (valid False) for the masked losses
VALID = torch.tensor([True, False, True, True, False, False, True, True, True, True])


def _global_batch():
    gen = torch.Generator().manual_seed(1234)
    image = F.normalize(torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=gen), dim=-1)
    text = F.normalize(torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=gen), dim=-1)
    return image, text


def _loss_and_grads(loss_fn, image, text, with_bias=False, **kw):
    """-> {loss, image, text, scale[, bias]}: the value and the gradients of every input."""
    img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    extra = (torch.tensor(BIAS, requires_grad=True),) if with_bias else ()
    loss = loss_fn(img, txt, scale, *extra, **kw)
    loss.backward()
    out = {"loss": loss.detach(), "image": img.grad, "text": txt.grad, "scale": scale.grad}
    if with_bias:
        out["bias"] = extra[0].grad
    return out


def _run_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        image, text = _global_batch()
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for local_loss, gather_with_grad, tiled in CLIP_CONFIGS:
            loss_fn = ClipLoss(
                local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=WORLD_SIZE,
                tiled=tiled, tile_size=3,
            )
            results[(local_loss, gather_with_grad, tiled)] = _loss_and_grads(loss_fn, image[mine], text[mine])
        siglip = SigLipLoss(rank=rank, world_size=WORLD_SIZE)
        results["siglip"] = _loss_and_grads(siglip, image[mine], text[mine], with_bias=True)
        for local_loss, tiled in itertools.product((False, True), repeat=2):
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=WORLD_SIZE,
                               tiled=tiled, tile_size=3)
            results[("masked", local_loss, tiled)] = _loss_and_grads(loss_fn, image[mine], text[mine],
                                                                     valid=VALID[mine])
        results["siglip_masked"] = _loss_and_grads(siglip, image[mine], text[mine], with_bias=True,
                                                   valid=VALID[mine])
        try:
            ClipLoss(rank=1 - rank, world_size=WORLD_SIZE)(image[mine], text[mine], SCALE)
            results["rank_mismatch_raises"] = False
        except ValueError:
            results["rank_mismatch_raises"] = True
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run both ranks once; -> [results of rank 0, results of rank 1]."""
    tmp = tmp_path_factory.mktemp("gloo")
    from gloo_ranks import run_ranks  # here, not at the top: the ranks run this file as a script

    run_ranks(__file__, WORLD_SIZE, tmp)
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process():
    """The one-process losses over the concatenated batch (the targets the gathered losses must reproduce)."""
    image, text = _global_batch()
    return {
        "clip": _loss_and_grads(ClipLoss(), image, text),
        "siglip": _loss_and_grads(SigLipLoss(), image, text, with_bias=True),
        "clip_valid": _loss_and_grads(ClipLoss(), image[VALID], text[VALID]),
        "siglip_valid": _loss_and_grads(SigLipLoss(), image[VALID], text[VALID], with_bias=True),
    }


def _slot(tensor, rank):
    return tensor[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]


def _close(actual, expected, msg):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=msg)


@pytest.mark.parametrize("local_loss", [False, True])
@pytest.mark.parametrize("tiled", [False, True])
def test_gather_with_grad_equals_single_process_loss(ranks, single_process, local_loss, tiled):
    ref = single_process["clip"]
    per_rank = [r[(local_loss, True, tiled)] for r in ranks]
    # local_loss: every rank has the loss of its own rows; their mean is the global loss.
    _close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"], "mean loss")
    _close(torch.stack([r["scale"] for r in per_rank]).mean(), ref["scale"], "mean logit_scale grad")
    for rank, r in enumerate(per_rank):
        if not local_loss:
            _close(r["loss"], ref["loss"], f"rank {rank} loss")
        _close(r["image"], WORLD_SIZE * _slot(ref["image"], rank), f"rank {rank} image grad")
        _close(r["text"], WORLD_SIZE * _slot(ref["text"], rank), f"rank {rank} text grad")


def test_gather_without_grad_keeps_local_slot_gradient(ranks, single_process):
    ref = single_process["clip"]
    for rank, results in enumerate(ranks):
        r = results[(False, False, False)]
        _close(r["loss"], ref["loss"], "loss")
        _close(r["image"], _slot(ref["image"], rank), "image grad (own slot only)")
        _close(r["text"], _slot(ref["text"], rank), "text grad (own slot only)")


@pytest.mark.parametrize("config", [c for c in CLIP_CONFIGS if not c[2]])
def test_tiled_equals_plain_across_processes(ranks, config):
    local_loss, gather_with_grad, _ = config
    for rank, results in enumerate(ranks):
        plain, tiled = results[(local_loss, gather_with_grad, False)], results[(local_loss, gather_with_grad, True)]
        for key in ("loss", "image", "text", "scale"):
            torch.testing.assert_close(tiled[key], plain[key], rtol=1e-5, atol=1e-5, msg=f"rank {rank} {key}")


def test_siglip_across_processes_equals_single_process(ranks, single_process):
    ref = single_process["siglip"]
    per_rank = [r["siglip"] for r in ranks]
    # Each rank's loss covers its images against every text, divided by the local batch.
    _close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"], "mean loss")
    for key in ("scale", "bias"):
        _close(torch.stack([r[key] for r in per_rank]).mean(), ref[key], f"mean {key} grad")
    for rank, r in enumerate(per_rank):
        _close(r["image"], WORLD_SIZE * _slot(ref["image"], rank), f"rank {rank} image grad")
        _close(r["text"], WORLD_SIZE * _slot(ref["text"], rank), f"rank {rank} text grad")


def _valid_slot(full_valid_grad, rank):
    """The single-process gradient of the valid rows, scattered back into rank ``rank``'s padded slot."""
    out = torch.zeros(LOCAL_BATCH, DIM)
    slot = VALID[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]
    start = int(VALID[:rank * LOCAL_BATCH].sum())
    out[slot] = full_valid_grad[start:start + int(slot.sum())]
    return out


@pytest.mark.parametrize("key", [("masked", ll, t) for ll in (False, True) for t in (False, True)] + ["siglip_masked"])
def test_padding_rows_are_left_out_on_every_rank(ranks, single_process, key):
    """Each rank's padded batch with a validity mask == one process over the valid rows only."""
    ref = single_process["siglip_valid" if key == "siglip_masked" else "clip_valid"]
    per_rank = [r[key] for r in ranks]
    _close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"], "mean loss")
    _close(torch.stack([r["scale"] for r in per_rank]).mean(), ref["scale"], "mean logit_scale grad")
    for rank, r in enumerate(per_rank):
        _close(r["image"], WORLD_SIZE * _valid_slot(ref["image"], rank), f"rank {rank} image grad")
        _close(r["text"], WORLD_SIZE * _valid_slot(ref["text"], rank), f"rank {rank} text grad")


def test_rank_mismatch_with_process_group_raises(ranks):
    assert all(r["rank_mismatch_raises"] for r in ranks)


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
