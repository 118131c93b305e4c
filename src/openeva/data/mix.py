"""Several data sources mixed with weights (e.g. 70% web pairs, 30% curated captions): the one mixer.

Two modes (``mode=``):

* ``sample`` (the default): each sample comes from source ``k`` with probability proportional to its weight;
  weights default to the sources' sizes (map-style lengths; for tar shard sets the shard count stands for the
  size, as counting samples would read every byte of remote shards);
* ``batch``: whole batches come from one source, the source of each batch drawn at the weights (EVA-CLIP's
  mixing of LAION and other sets). Only for iterable sources (tar shards): each consumer yields runs of
  ``batch_size`` samples from one source, which the DataLoader collates into one batch.

Resume (:meth:`MixedIterableDataset.set_position`) continues a mixed stream at the sample, as
:meth:`~openeva.data.webdataset.TarShardDataset.set_position` does for one shard set: each DataLoader worker
plays the worker whose batch comes next, replays its choice sequence from the epoch's start and passes over the
samples of the batches before the resumed one without decoding them. Its sources' raw streams (tar members as
bytes) are read from the epoch's start, through their shuffle buffers: a buffer is refilled from the start of the
epoch, as in the uninterrupted run, so the resumed batches equal that run's (the cost is streaming, not decoding,
what was already trained on). A mix with a source that has no raw stream (another kind of iterable dataset)
has no ``set_position``: the training loader decodes and drops the batches before the position instead.

For map-style sources (:class:`MixedDataset`) a weight is the fraction of the mixed epoch drawn from that
source, independent of its size: a small source with a large weight is repeated (each pass a fresh
permutation), a large source with a small weight is subsampled. The choices are seeded by ``(seed, epoch)``
and, for iterable sources, by rank and worker too, so no two consumers draw the same sequence.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from openeva.data.loader import SharedInt, derive_seed

MIX_MODES = ("sample", "batch")


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
        self._epoch, self._plan_epoch = SharedInt(), None
        self.set_epoch(0)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` (persistent DataLoader workers follow: the epoch is in shared memory and each
        process draws the plan again when it changes)."""
        self._epoch.set(epoch)
        self._draw_plan()

    def _draw_plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        self._plan_epoch = self.epoch
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
        self._draw_plan()
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


def source_size(ds: Any) -> int:
    """The size that default mixing weights use: ``len(ds)``, or the number of tar shards of a shard set."""
    if hasattr(ds, "shards"):
        return len(ds.shards)
    try:
        return len(ds)
    except TypeError:
        raise ValueError(f"cannot tell the size of {type(ds).__name__} for mixing; give the weights") from None


class MixedIterableDataset(IterableDataset):
    """Interleave iterable sources (e.g. tar shard sets) in ``sample`` or ``batch`` mode (module docstring),
    among the sources not yet exhausted; ends when all are.

    Each source splits itself across ranks and workers; the choice sequence is a function of
    ``(seed, epoch, rank, worker)``. :meth:`set_epoch` is forwarded to the sources and reaches persistent
    DataLoader workers. ``rank`` defaults to torch.distributed's when initialized, else 0.
    """

    def __init__(self, datasets: Sequence[IterableDataset], weights: Sequence[float] | None = None, seed: int = 0,
                 mode: str = "sample", batch_size: int | None = None, rank: int | None = None):
        if not datasets:
            raise ValueError("MixedIterableDataset needs at least one dataset")
        if mode not in MIX_MODES:
            raise ValueError(f"mix mode must be one of {MIX_MODES}, got {mode!r}")
        if mode == "batch" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"mix mode 'batch' needs the batch size (an int >= 1), got {batch_size!r}")
        self.datasets = list(datasets)
        sizes = [source_size(ds) for ds in self.datasets] if weights is None else weights
        self.probs = _check_weights(sizes, len(datasets))
        self.seed, self.mode, self.batch_size, self.rank = int(seed), mode, batch_size, rank
        self._epoch, self._start, self._loader_batch = SharedInt(), SharedInt(), SharedInt()
        if all(hasattr(ds, "raw_stream") for ds in self.datasets):  # else a resuming loader decodes and drops
            self.set_position = self._set_position

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        self._start.set(0)
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _set_position(self, epoch: int, start_batch: int, batch_size: int) -> None:
        """``set_position``, where every source has a raw stream (tar shard sets): resume epoch ``epoch`` at
        batch ``start_batch`` of a DataLoader with this ``batch_size``, the samples of the batches before it
        passed over undecoded (module docstring). Exact while every worker still had samples at ``start_batch``.
        A mix with another kind of source has no ``set_position``: the loader decodes and drops instead."""
        if start_batch < 0 or batch_size < 1:
            raise ValueError(f"start_batch must be >= 0 and batch_size >= 1, got {start_batch}, {batch_size}")
        self.set_epoch(epoch)
        self._start.set(start_batch)
        self._loader_batch.set(batch_size)

    def _rank(self) -> int:
        if self.rank is not None:
            return self.rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self._start.get()
        role = (worker + start) % num_workers  # the worker whose batch comes next (set_position)
        batches_before = -(-(start - role) // num_workers) if start > role else 0  # its batches j < start
        skip = batches_before * self._loader_batch.get()
        epoch = self.epoch
        rng = random.Random(derive_seed(self.seed, epoch, self._rank(), role))
        iterators = {k: self._source(ds, role, num_workers, epoch) for k, ds in enumerate(self.datasets)
                     if self.probs[k] > 0}
        run = 1 if self.mode == "sample" else self.batch_size
        position = 0  # samples given (or passed over) by this consumer
        while iterators:
            need = run  # batch mode: a whole batch from one source; where a source ends, the next fills it up
            while need and iterators:
                keys = list(iterators)
                k = rng.choices(keys, weights=[self.probs[i] for i in keys])[0]
                while need:
                    try:
                        item = next(iterators[k])
                    except StopIteration:
                        del iterators[k]
                        break
                    if position >= skip:
                        yield item() if isinstance(item, partial) else item
                    position += 1
                    need -= 1

    def _source(self, ds: IterableDataset, role: int, num_workers: int, epoch: int) -> Iterator[Any]:
        """One source's stream for the consumer ``role`` plays: undecoded samples as calls that decode them
        (a tar shard set's raw stream), else the source's own (decoded) items."""
        if not hasattr(ds, "raw_stream"):
            return iter(ds)
        rank, world_size = ds._distributed()
        consumer, consumers = rank * num_workers + role, world_size * num_workers
        return (partial(ds.decode_at, key, files, consumer, index, epoch)
                for index, (key, files) in enumerate(ds.raw_stream(consumer, consumers)))

    @property
    def skipped(self) -> Counter:
        total: Counter = Counter()
        for ds in self.datasets:
            total.update(getattr(ds, "skipped", {}))
        return total
