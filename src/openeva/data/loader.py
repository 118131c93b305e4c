"""Batches from datasets whose bad samples come back as ``None``.

The skip design, shared by every openeva data source:

* A dataset's ``__getitem__`` (or iterator) returns/yields ``None`` for a bad sample (missing file, corrupt
  image, empty caption) and increments ``dataset.skipped[reason]``; it never raises in the training loop.
* :func:`collate_skip_none` drops the Nones and returns a :class:`Batch`: a tuple of collated columns
  (so ``images, texts = batch`` works) that also carries ``batch.num_skipped``. With DataLoader worker
  processes, ``dataset.skipped`` in the main process stays at zero (each worker counts in its own copy),
  so ``num_skipped`` is how skip counts reach the training loop.
* If every sample of a batch is bad, the collate returns ``None``; the engine skips that step.
* A shard that fails for good (:mod:`openeva.data.webdataset`) is listed in the dataset's ``failed_shards`` by
  the process that read it; from a DataLoader worker its name also goes through a queue made with the dataset
  (so inherited by every worker) to the main process, where :func:`take_failed_shards` drains it (with the
  main process's own list, for ``num_workers=0``): the training loop counts and names every failed shard in
  its metrics whatever the worker count. A queue, not the batches: a shard that fails after a worker's last
  full batch has no batch left to carry its name.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

logger = logging.getLogger(__name__)
_WARN_FIRST_N = 5


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``(seed, epoch, index)``), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block under its own torch (CPU), numpy and Python random state, restoring the caller's after.

    Loading a sample under ``seeded_rng(derive_seed(seed, epoch, index))`` makes its augmentation a function
    of where the run is, whatever process, worker or earlier batch loads it (what exact resume needs)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class SharedInt:
    """An integer in shared memory (the epoch, a resume position): set in the main process, read by persistent
    DataLoader workers (their copy of a dataset is made once, so a plain attribute set later never reaches them)."""

    def __init__(self, value: int = 0):
        self._value = multiprocessing.Value("q", int(value), lock=False)

    def set(self, value: int) -> None:
        self._value.value = int(value)

    def get(self) -> int:
        return int(self._value.value)


def default_num_workers() -> int:
    """DataLoader workers when none are asked for: the CPUs this process may use, less one for the main
    process (at least 1 where there are two or more, 0 on a single CPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, cpus - 1)


def take_failed_shards(dataset: Any) -> list[str]:
    """Names of the shards that failed since the last call, read in this process or in any DataLoader worker,
    from ``dataset`` or, for a mix, each of its sources (their ``take_failed_shards``)."""
    names: list[str] = []
    for ds in getattr(dataset, "datasets", None) or [dataset]:
        if hasattr(ds, "take_failed_shards"):
            names += ds.take_failed_shards()
    return names


def record_skip(skipped: Counter, reason: str, detail: str) -> None:
    """Count a skipped sample under ``reason``; log the first few of each reason so problems are visible."""
    skipped[reason] += 1
    if skipped[reason] <= _WARN_FIRST_N:
        logger.warning("skipping sample (%s): %s", reason, detail)


class Batch(tuple):
    """Collated columns of the good samples of a batch, e.g. ``(images, texts)``, plus ``num_skipped``."""

    num_skipped: int

    def __new__(cls, columns: Sequence[Any], num_skipped: int = 0) -> Batch:
        self = super().__new__(cls, columns)
        self.num_skipped = int(num_skipped)
        return self

    def __getnewargs__(self) -> tuple[tuple[Any, ...], int]:  # keep num_skipped across worker pickling
        return tuple(self), self.num_skipped

    def __repr__(self) -> str:
        return f"Batch({len(self)} columns, size={self.size}, num_skipped={self.num_skipped})"

    @property
    def images(self) -> Any:
        return self[0]

    @property
    def texts(self) -> Any:
        """Second column: caption tokens or strings (class labels for classification sources)."""
        return self[1]

    @property
    def size(self) -> int:
        """Number of good samples."""
        first = self[0]
        return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        return Batch([fn(c) if isinstance(c, torch.Tensor) else c for c in self], self.num_skipped)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True); keeps the Batch type and its count."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


def _collate_column(values: list[Any]) -> Any:
    """Stack tensors / numbers / strings with torch's default collate; keep anything else (PIL) as a list."""
    try:
        return default_collate(values)
    except TypeError:
        return list(values)


def collate_skip_none(samples: Sequence[Any]) -> Batch | None:
    """Collate fn: drop ``None`` samples, collate the rest column-wise; ``None`` if nothing is left."""
    good = [s for s in samples if s is not None]
    num_skipped = len(samples) - len(good)
    if not good:
        return None
    if not isinstance(good[0], (tuple, list)):
        return Batch([_collate_column(good)], num_skipped)
    columns = [_collate_column([s[i] for s in good]) for i in range(len(good[0]))]
    return Batch(columns, num_skipped)
