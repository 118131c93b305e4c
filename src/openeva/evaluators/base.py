"""What every evaluator shares: the protocol, the batching options, the data it reads, and its rank's batches.

An evaluator is built from typed options and run as ``evaluator.run(model, data, *, device, precision,
group=None) -> {metric: value}``. ``data`` is a map-style dataset (the same on every rank: each rank reads its
block, :func:`~openeva.evaluators.distributed.rank_positions`) or, for the evaluators that only sum counts, an
iterable of batches that is already this rank's part (a training run's validation loader).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from openeva.data.loader import collate_skip_none
from openeva.evaluators.distributed import rank_positions


class Evaluator(Protocol):
    """One protocol: ``run`` scores ``model`` on ``data`` (its rank's part) and applies the evaluator's rank rule."""

    name: str

    def run(self, model, data, *, device: str | torch.device = "cpu", precision: str = "fp32",
            group=None) -> dict[str, float]: ...


@dataclass(frozen=True)
class Batching:
    """How a dataset is read: images per forward, loader worker processes, a progress bar."""

    batch_size: int = 64
    num_workers: int = 0
    progress: bool = False

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")


@dataclass(frozen=True)
class Labelled:
    """Images with class labels: ``dataset[i] -> (image (3, H, W), label) | None``, and the class names."""

    dataset: Any
    classnames: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "classnames", tuple(self.classnames))
        if len(self.classnames) < 2:
            raise ValueError(f"classification needs at least 2 class names, got {list(self.classnames)}")


@dataclass(frozen=True)
class TrainTest:
    """A labelled training set (the probe's fit, kNN's memory bank) and the labelled set it is scored on."""

    train: Labelled
    test: Labelled

    def __post_init__(self):
        if self.train.classnames != self.test.classnames:
            raise ValueError("the training and test sets have different class names")


class _Positioned(torch.utils.data.Dataset):
    """``dataset[positions[i]]`` with its position appended: ``(*item, position)`` (None stays None)."""

    def __init__(self, dataset, positions: Sequence[int]):
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        item = self.dataset[self.positions[i]]
        if item is None:
            return None
        return (*item, self.positions[i]) if isinstance(item, (tuple, list)) else (item, self.positions[i])


def is_dataset(data) -> bool:
    """Map-style (``len`` and indexing) and not a list / tuple, which is taken as ready batches."""
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (list, tuple))


def rank_batches(data, batching: Batching, group, desc: str = "evaluating") -> Iterator[tuple[list, Any]]:
    """``(columns, positions)`` of this rank's batches, skipped samples dropped.

    A dataset: this rank's block, batched, with ``positions`` the (B,) dataset positions. An iterable of
    batches: taken as this rank's part, ``positions`` None; a None batch (every sample failed) is skipped."""
    if is_dataset(data):
        part = _Positioned(data, rank_positions(len(data), group))
        loader: Iterable = torch.utils.data.DataLoader(part, batch_size=batching.batch_size, shuffle=False,
                                                       num_workers=batching.num_workers,
                                                       collate_fn=collate_skip_none)
    else:
        loader = data
    for batch in tqdm(loader, desc=desc, disable=not batching.progress, unit="batch"):
        if batch is None:
            continue
        if isinstance(batch, dict):
            batch = (batch["image"], batch["label"])
        columns = list(batch)
        if is_dataset(data):
            yield columns[:-1], columns[-1]
        else:
            yield columns, None


def check_gatherable(data, what: str) -> None:
    """The feature-gathering rules need positions: a dataset, not pre-split batches."""
    if not is_dataset(data):
        raise ValueError(f"{what} gathers features across ranks in dataset order, so it needs a map-style dataset "
                         f"(len and indexing), got {type(data).__name__}")
