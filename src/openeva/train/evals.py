"""Which evaluators validate a training run: ``TrainConfig.evals`` names them, each task states what it can run.

The evaluators are :mod:`openeva.evaluators`, the same objects ``openeva eval`` runs: ``retrieval`` and
``zeroshot`` (CLIP training), ``accuracy`` (fine-tuning), ``miou`` (segmentation). ``evals=None`` keeps a task's
default (all it supports); ``evals=()`` turns validation off; naming an evaluator the task cannot run fails in
the preflight, before any compute.
"""

from __future__ import annotations

EVALS = ("retrieval", "zeroshot", "accuracy", "miou")


def select_evals(cfg, supported: tuple[str, ...]) -> tuple[str, ...]:
    """The evaluators ``cfg`` runs for a task that supports ``supported`` (its default: all of them)."""
    if cfg.evals is None:
        return supported
    unsupported = [e for e in cfg.evals if e not in supported]
    if unsupported:
        raise ValueError(f"config evals={list(cfg.evals)}: task {cfg.task!r} validates with "
                         f"{', '.join(supported) or 'nothing'}, not {', '.join(unsupported)}")
    return tuple(cfg.evals)


# ------------------------------------------------------------------------------------------ rank shares
def eval_group(world):
    """The process group a training run's evaluators share their work over: the default group when the run has
    several processes (every rank scores its share, :mod:`openeva.evaluators.distributed`), else None."""
    if not world.distributed:
        return None
    import torch.distributed as dist

    return dist.group.WORLD


def accepts_group(fn) -> bool:
    """Whether ``fn`` takes a ``group`` keyword (a Task's ``evaluate``, a custom validation callable)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "group" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def rank_share(data, group, max_batches: int | None = None):
    """``(data, Batching)`` for an evaluator run by every rank of ``group`` over a validation set.

    A ``DataLoader`` over a map-style dataset gives its dataset (the evaluator then reads this rank's contiguous
    block of positions, so the ranks' shares are disjoint and cover the set) with the loader's batch size and
    workers; ``max_batches`` becomes the first ``max_batches x batch_size`` samples, so a capped evaluation scores
    the same samples under any number of ranks. Any other iterable of batches is dealt round-robin: rank r keeps
    batches r, r + world, ... (its disjoint share)."""
    import torch

    from openeva.evaluators import Batching
    from openeva.evaluators.base import is_dataset
    from openeva.evaluators.distributed import rank_world

    batch_size = getattr(data, "batch_size", None) or 64
    batching = Batching(batch_size=batch_size, num_workers=getattr(data, "num_workers", 0) or 0)
    dataset = getattr(data, "dataset", None)
    if isinstance(data, torch.utils.data.DataLoader) and is_dataset(dataset) and getattr(data, "batch_size", None):
        if max_batches is not None and len(dataset) > max_batches * batch_size:
            dataset = torch.utils.data.Subset(dataset, range(max_batches * batch_size))
        return dataset, batching
    if is_dataset(data):
        return data, batching
    return _RoundRobin(data, *rank_world(group), max_batches), batching


class _RoundRobin:
    """Batches ``rank``, ``rank + world``, ... of the first ``max_batches`` (all: None) of ``batches``; iterable
    again and again, each pass streaming (nothing held beyond the current batch)."""

    def __init__(self, batches, rank: int, world: int, max_batches: int | None):
        self.batches, self.rank, self.world, self.max_batches = batches, rank, world, max_batches

    def __iter__(self):
        import itertools

        for i, batch in enumerate(itertools.islice(self.batches, self.max_batches)):
            if i % self.world == self.rank:
                yield batch
