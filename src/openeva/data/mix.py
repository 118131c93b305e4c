"""Several data sources mixed with weights (e.g. 70% web pairs, 30% curated captions).

A weight is the fraction of the mixed stream drawn from that source, independent of the source's size:
a small source with a large weight is repeated (each pass over it is a fresh permutation), a large source
with a small weight is subsampled.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def _check_weights(weights: Sequence[float], num_sources: int) -> np.ndarray:
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (num_sources,):
        raise ValueError(f"got {len(w)} weights for {num_sources} datasets")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(weights)}")
    return w / w.sum()


def _split_counts(probs: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to total, proportional to probs (largest remainder)."""
    exact = probs * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


class MixedDataset(Dataset):
    """Map-style mix: ``num_samples`` samples, exactly ``round(weight_k * num_samples)`` from source k.

    ``weights`` default to the source lengths (plain concatenation, shuffled); ``num_samples`` defaults
    to the total length. The plan (which source and which index feeds each position) is a function of
    ``(seed, epoch)``; :meth:`set_epoch` draws the next epoch's plan. Sources return what they return
    (including ``None`` for bad samples, see :mod:`openeva.data.loader`).
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        lengths = []
        for i, ds in enumerate(datasets):
            if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
                raise ValueError(f"dataset {i} ({type(ds).__name__}) is not map-style; use MixedIterableDataset")
            lengths.append(len(ds))
        self.datasets = list(datasets)
        self.probs = _check_weights(lengths if weights is None else weights, len(datasets))
        empty = [i for i, (n, p) in enumerate(zip(lengths, self.probs)) if n == 0 and p > 0]
        if empty:
            raise ValueError(f"datasets {empty} are empty but have a non-zero weight")
        total = sum(lengths) if num_samples is None else num_samples
        if not isinstance(total, int) or total < 0:
            raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
        self.num_samples = total
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the plan for ``epoch``."""
        self.epoch = int(epoch)
        rng = np.random.default_rng((self.seed, self.epoch))
        counts = _split_counts(self.probs, self.num_samples)
        sources = np.repeat(np.arange(len(self.datasets)), counts)
        indices = np.empty(self.num_samples, dtype=np.int64)
        start = 0
        for k, count in enumerate(counts):
            n = len(self.datasets[k])
            passes = math.ceil(count / n) if count else 0
            picks = np.concatenate([rng.permutation(n) for _ in range(passes)]) if passes else np.empty(0)
            indices[start : start + count] = picks[:count]
            start += count
        order = rng.permutation(self.num_samples)
        self._sources = sources[order]  # (N,)
        self._indices = indices[order]  # (N,)

    def __len__(self) -> int:
        return self.num_samples

    def source_of(self, index: int) -> tuple[int, int]:
        """``(dataset number, index within it)`` feeding position ``index`` this epoch."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for MixedDataset of {self.num_samples} samples")
        return int(self._sources[index]), int(self._indices[index])

    def __getitem__(self, index: int) -> Any:
        k, j = self.source_of(index)
        return self.datasets[k][j]

    @property
    def skipped(self) -> Counter:
        """Skip counts summed over the sources that count them (this process only)."""
        total: Counter = Counter()
        for ds in self.datasets:
            total.update(getattr(ds, "skipped", {}))
        return total


class MixedIterableDataset(IterableDataset):
    """Interleave iterable sources (e.g. tar shard sets): each next sample comes from source k with
    probability proportional to ``weights[k]`` among the sources not yet exhausted; ends when all are.

    Each source splits itself across ranks and workers; the choice sequence is a function of
    ``(seed, epoch, worker id)``. :meth:`set_epoch` is forwarded to the sources.
    """

    def __init__(self, datasets: Sequence[IterableDataset], weights: Sequence[float] | None = None, seed: int = 0):
        if not datasets:
            raise ValueError("MixedIterableDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.probs = _check_weights([1.0] * len(datasets) if weights is None else weights, len(datasets))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + worker)
        iterators = {k: iter(ds) for k, ds in enumerate(self.datasets) if self.probs[k] > 0}
        while iterators:
            keys = list(iterators)
            k = rng.choices(keys, weights=[self.probs[i] for i in keys])[0]
            try:
                yield next(iterators[k])
            except StopIteration:
                del iterators[k]

    @property
    def skipped(self) -> Counter:
        total: Counter = Counter()
        for ds in self.datasets:
            total.update(getattr(ds, "skipped", {}))
        return total
