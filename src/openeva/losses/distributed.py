"""Collectives for the contrastive losses: gathering features across processes.

The only place in openeva that talks to ``torch.distributed`` on behalf of a loss. ``rank`` and ``world_size``
are passed in by the caller (as open_clip's ``ClipLoss`` takes them); the process group is checked against
them so a mismatch fails loudly instead of silently computing a wrong loss.

Gradient convention (the same as open_clip with ``gather_with_grad``): the backward of
:func:`all_gather_with_grad` *sums* the gradients that every process computed for a rank's slot. When every
process computes the same global loss, a process's local features therefore receive ``world_size`` times the
gradient of that loss; DDP's gradient averaging divides it back, so parameters see exactly the gradient of the
global loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "check_process_group",
    "gather_features",
    "gather_mask",
]


def check_process_group(rank: int, world_size: int) -> None:
    """Raise a clear error unless a default process group of ``world_size`` exists with this ``rank``."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} needs an initialized torch.distributed process group "
            "(call torch.distributed.init_process_group first)"
        )
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(
            f"loss was built with rank={rank}, world_size={world_size} but the process group has "
            f"rank={dist.get_rank()}, world_size={dist.get_world_size()}"
        )


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums each slot's gradient over processes and returns the local slot."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        world_size = dist.get_world_size()
        chunks = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(chunks, tensor)
        ctx.rank = dist.get_rank()
        ctx.world_size = world_size
        return torch.cat(chunks, dim=0)  # (W * B, ...)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad_output = grad_output.contiguous()  # (W * B, ...)
        local = grad_output.shape[0] // ctx.world_size
        if dist.get_backend() == dist.Backend.NCCL:
            # Reduce-scatter moves B rows per process instead of W * B.
            grad_local = torch.empty_like(grad_output[:local])
            dist.reduce_scatter_tensor(grad_local, grad_output)
            return grad_local
        # gloo has no reduce-scatter: sum everything (on a copy, autograd owns grad_output), keep our slot.
        summed = grad_output.clone()
        dist.all_reduce(summed)
        return summed[ctx.rank * local:(ctx.rank + 1) * local]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) from every process -> (W * B, ...), differentiable.

    Every process must pass the same shape. Backward sums the gradient for this process's slot over all
    processes (a reduce-scatter), see the module docstring.
    """
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor, rank: int, keep_local_grad: bool) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) from every process -> (W * B, ...) without gradients to other processes.

    With ``keep_local_grad`` this process's own slot is the input tensor itself, so the local features still
    receive the gradient of the terms they appear in (open_clip's behaviour without gather-with-grad).
    """
    chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    with torch.no_grad():
        dist.all_gather(chunks, tensor.contiguous())
    if keep_local_grad:
        chunks[rank] = tensor
    return torch.cat(chunks, dim=0)


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather (B, D) image and text features from all processes -> two (W * B, D) tensors.

    Semantics follow open_clip's ``gather_features``: with ``gather_with_grad`` gradients flow back to every
    process; otherwise the gather is gradient-free and, unless ``local_loss``, the local slot is replaced by
    the local (differentiable) features.
    """
    check_process_group(rank, world_size)
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    keep_local = not local_loss
    return (
        all_gather_no_grad(image_features, rank, keep_local),
        all_gather_no_grad(text_features, rank, keep_local),
    )


def gather_mask(valid: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Concatenate a (B,) bool mask from every process -> (W * B,) (itself with one process)."""
    if world_size == 1:
        return valid
    check_process_group(rank, world_size)
    return all_gather_no_grad(valid.to(torch.uint8), rank, keep_local_grad=False).bool()
