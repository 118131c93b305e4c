"""The rank rules of the evaluators, over a ``torch.distributed`` process group (``None``: one process).

Every evaluator reads the same dataset on every rank and takes its own contiguous block of positions
(:func:`rank_positions`); what it does with the parts is one of three rules:

* counts (zero-shot / classifier accuracy, mIoU, the scoring half of kNN and the probe): each rank scores its
  part and the integer counts are summed (:func:`all_sum`), so the metrics equal one process's exactly;
* features (retrieval, the kNN memory bank, the probe's training set): each rank encodes its part and every
  rank receives all rows in dataset order (:func:`all_gather_rows`);
* a fit (the linear probe): rank 0 fits on the gathered features and shares the result (:func:`broadcast`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def rank_world(group) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) for None (a single process)."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def rank_positions(n: int, group) -> range:
    """This rank's contiguous block of ``n`` dataset positions (blocks differ in size by at most one)."""
    rank, world = rank_world(group)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks of ``group`` (a CPU copy; the input is untouched)."""
    out = tensor.detach().cpu().clone()
    if group is not None:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_gather_rows(tensor: torch.Tensor, group) -> torch.Tensor:
    """(M_rank, ...) rows of every rank -> (sum M, ...) on every rank, concatenated in rank order.

    Ranks may hold different numbers of rows (a skipped image, an uneven split): rows are padded to the
    longest part for the collective and cut back after it."""
    local = tensor.detach().cpu().contiguous()
    if group is None:
        return local
    _, world = rank_world(group)
    sizes = torch.zeros(world, dtype=torch.long)
    sizes[dist.get_rank(group)] = local.shape[0]
    dist.all_reduce(sizes, group=group)
    longest = int(sizes.max())
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:int(m)] for p, m in zip(parts, sizes)])


def broadcast(obj: Any, group, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank of ``group`` (pickled; CPU tensors inside are fine)."""
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src), group=group)
    return box[0]
