"""Training data that resumes exactly: a batch order keyed by ``(seed, epoch)`` and per-sample random streams.

Exact resume needs the data position and the augmentation randomness to be functions of where the run is,
not of what happened before. So:

* Map-style datasets: epoch ``e``'s order is a permutation drawn from ``(seed, e)``; global batch ``k`` is
  positions ``[k * W * B, (k + 1) * W * B)`` of it and rank ``r`` takes the ``r``-th slice of ``B``. A resumed
  run starts at batch ``k`` without loading the ones before. The same global batch therefore reaches the
  model whatever ``W`` is, which is what makes a 2-process run follow the 1-process trajectory.
* Each sample is loaded under its own random stream seeded by ``(seed, epoch, index)`` (torch, numpy and
  Python RNGs forked and restored), so augmentations do not depend on workers, ranks or earlier batches,
  and never consume the training RNG (dropout, patch dropout).
* Iterable datasets (tar shards) are ordered by ``(seed, epoch)`` themselves and load each sample under its own
  seeded stream too. A resumed run continues at the sample: each consumer streams its shards from the start of
  the epoch (tar streams cannot seek), refilling its shuffle buffer as the uninterrupted run did, and passes over
  the samples it had already given without decoding them (:meth:`TarShardDataset.set_position`); the resumed
  batches equal an uninterrupted run's. A mix of shard sets does the same (:meth:`MixedIterableDataset.set_position`);
  other iterable datasets decode and drop the batches before.
* Tar shards are split exactly once per epoch over ranks x workers (:func:`~openeva.data.webdataset.split_shards`).
  A rank whose shards run out before ``len(loader)`` batches ends its epoch with ``None`` batches (the engine
  skips those steps on every rank together, counting the samples as skipped), never re-reading what it already
  gave; ``data.resampled=true`` draws shards with replacement instead, an endless stream cut into epochs.

One DataLoader serves the whole run: its workers persist across epochs (``persistent_workers``), the epoch
reaching them through shared memory (:class:`~openeva.data.loader.SharedInt`) and, for map-style data,
through the batch sampler, which lives in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from openeva.data.captions import CaptionDataset, ImageTextFolder
from openeva.data.labelled import detect_format
from openeva.data.loader import collate_skip_none, default_num_workers, derive_seed, seeded_rng
from openeva.data.mix import MixedDataset, MixedIterableDataset
from openeva.data.synthetic import ShapesDataset
from openeva.data.webdataset import TarShardDataset, shard_paths

__all__ = ["ResumableLoader", "build_image_text_dataset", "build_val_pairs", "check_sources", "derive_seed",
           "seeded_rng"]
logger = logging.getLogger(__name__)


class _SeededItems(Dataset):
    """``ds[(epoch, index)]`` = ``dataset[index]`` loaded under the stream ``(seed, epoch, index)``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with seeded_rng(derive_seed(self.seed, epoch, index)):
            return self.dataset[index]


class _EpochBatches:
    """Batch sampler: this rank's slice of global batches ``start .. n - 1`` of one epoch's order (the loader
    points it at another epoch before each pass; it stays in this process, so persistent workers follow)."""

    def __init__(self, order: torch.Tensor, epoch: int, start: int, num_batches: int, batch_size: int,
                 rank: int, world_size: int):
        self.order, self.epoch, self.start, self.num_batches = order, epoch, start, num_batches
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self):
        B, W = self.batch_size, self.world_size
        for k in range(self.start, self.num_batches):
            first = k * W * B + self.rank * B
            yield [(self.epoch, int(i)) for i in self.order[first:first + B]]


class ResumableLoader:
    """Batches of one rank for any epoch, from any batch position: ``batches(epoch, start)``.

    ``len(loader)`` is the number of batches per epoch (the same on every rank: the tail that does not fill
    a global batch is dropped). Iterable datasets need ``samples_per_epoch``. The collate function returns
    ``None`` for a batch whose every sample failed (see :mod:`openeva.data.loader`). ``num_workers=None``
    takes :func:`~openeva.data.loader.default_num_workers`; one DataLoader, its workers persistent, serves
    every epoch.
    """

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int | None = 0,
        collate_fn: Callable = collate_skip_none,
        pin_memory: bool = False,
        samples_per_epoch: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if num_workers is None:
            num_workers = default_num_workers()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (or None: one per CPU but one), got {num_workers}")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.collate_fn, self.pin_memory = collate_fn, pin_memory
        self.iterable = isinstance(dataset, IterableDataset)
        global_batch = batch_size * world_size
        if self.iterable:
            if not samples_per_epoch:
                raise ValueError("an iterable dataset (tar shards) needs the number of samples per epoch "
                                 "(data.train_num_samples)")
            total = samples_per_epoch
        else:  # an epoch reads the dataset once, or samples_per_epoch of it
            total = len(dataset) if samples_per_epoch is None else min(samples_per_epoch, len(dataset))
        self.num_batches = total // global_batch
        if self.num_batches == 0:
            raise ValueError(f"the training data has {total} samples, fewer than one global batch "
                             f"(batch_size {batch_size} x {world_size} processes = {global_batch})")
        self._sampler: _EpochBatches | None = None
        self._loader: DataLoader | None = None
        if rank == 0:  # said at start: resampling, and an exact split that leaves ranks uneven, are warnings
            for ds in getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", dataset)]:  # mix, wrapper
                if hasattr(ds, "describe_split"):
                    uneven = ds.resampled or len(ds.shards) % (world_size * max(1, num_workers)) != 0
                    logger.log(logging.WARNING if uneven else logging.INFO, "training shards: %s",
                               ds.describe_split(num_workers))

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s sample order (map-style datasets)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))

    def _build(self) -> DataLoader:
        """The run's one DataLoader (workers persist across epochs); an explicit generator, so creating
        iterators never draws from the global (training) RNG."""
        common = dict(collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(derive_seed(self.seed, self.rank)))
        if self.iterable:
            return DataLoader(self.dataset, batch_size=self.batch_size, **common)
        self._sampler = _EpochBatches(self.order(0), 0, 0, self.num_batches, self.batch_size, self.rank,
                                      self.world_size)
        return DataLoader(_SeededItems(self.dataset, self.seed), batch_sampler=self._sampler, **common)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"batch position {start} outside the epoch's {self.num_batches} batches")
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self._loader is None:
            self._loader = self._build()
        if self.iterable:
            yield from self._iterable_batches(epoch, start)
            return
        self._sampler.order, self._sampler.epoch, self._sampler.start = self.order(epoch), epoch, start
        yield from self._loader

    def _iterable_batches(self, epoch: int, start: int) -> Iterator[Any]:
        skips_itself = hasattr(self.dataset, "set_position")
        if skips_itself:  # the consumers pass over the first `start` batches' samples without decoding them
            self.dataset.set_position(epoch, start, self.batch_size)
        it = iter(self._loader)
        for k in range(start if skips_itself else 0, self.num_batches):
            batch = next(it, StopIteration)
            if batch is StopIteration:
                if k == 0:
                    raise ValueError("the iterable training dataset produced no batch")
                logger.warning("rank %d: its shards gave %d of the epoch's %d batches in epoch %d; the remaining "
                               "steps are skipped on every rank, never re-reading samples (data.resampled=true or "
                               "a shard count divisible by ranks x workers avoids this)", self.rank, k,
                               self.num_batches, epoch)
                yield from (None for _ in range(max(k, start), self.num_batches))
                return
            if k >= start:
                yield batch


# --------------------------------------------------------------------------------------------- batches
def batch_size_of(batch) -> int:
    """Number of samples in a collated batch (0 for ``None``)."""
    if batch is None:
        return 0
    first = batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values())) if isinstance(
        batch, dict) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)


def trim_batch(batch, n: int):
    """The first ``n`` samples of a batch (ranks must feed equally sized batches to gathering losses)."""
    if batch_size_of(batch) == n:
        return batch
    if isinstance(batch, dict):
        return {k: v[:n] for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        columns = [c[:n] for c in batch]
        if hasattr(batch, "num_skipped"):
            return type(batch)(columns, batch.num_skipped)
        return type(batch)(columns)
    return batch[:n]


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if hasattr(batch, "to") and hasattr(batch, "num_skipped"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------------------------------ image-text datasets
_TRAIN_KINDS = {"csv": "index", "jsonl": "index", "wds": "tar", "folder": "folder"}


def _kind(source: str) -> str:
    """synthetic | index (caption CSV/TSV/JSONL) | folder (images with .txt captions) | tar (shards)."""
    if source == "synthetic":
        return "synthetic"
    try:
        kind = _TRAIN_KINDS.get(detect_format(source))
    except FileNotFoundError:
        raise FileNotFoundError(f"training data source not found: {source} (data.train)") from None
    except ValueError:
        kind = None
    if kind is None:
        raise ValueError(f"cannot tell the type of training data source {source}: expected 'synthetic', a "
                         ".csv/.tsv/.jsonl caption index, an image-text folder or .tar shards")
    return kind


def check_sources(sources: list[str]) -> None:
    """Fail before any compute when a source (a caption index, a folder, any shard of a pattern) is missing."""
    for source in sources:
        if _kind(source) == "tar":
            try:
                shard_paths(source)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"data.train={source!r}: {e}") from None


def build_image_text_dataset(cfg, transform, tokenizer, image_size: int, seed: int, rank: int = 0,
                             world_size: int = 1, images_only: bool = False) -> Dataset | IterableDataset:
    """The training pairs of ``cfg`` (a :class:`~openeva.train.config.DataConfig`), mixed if several sources.

    ``images_only=True`` (MIM) reads the same sources with captions ignored: items are ``(image, "")`` and an
    image without a caption (a class folder, ImageNet-style shards) is used, not skipped.
    """
    sources = cfg.sources()
    check_sources(sources)
    datasets = []
    for source in sources:
        kind = _kind(source)
        if kind == "synthetic":
            datasets.append(ShapesDataset(cfg.synthetic_num_samples, image_size=image_size, seed=seed,
                                          split="train", transform=transform, tokenizer=tokenizer))
        elif kind == "index":
            datasets.append(CaptionDataset(source, image_key=cfg.image_key, caption_key=cfg.caption_key,
                                           transform=transform, tokenizer=tokenizer, images_only=images_only))
        elif kind == "folder":
            datasets.append(ImageTextFolder(source, transform=transform, tokenizer=tokenizer,
                                            images_only=images_only))
        else:
            datasets.append(TarShardDataset(source, transform=transform, tokenizer=tokenizer, shuffle_shards=True,
                                            shuffle_buffer=1000, seed=seed, rank=rank, world_size=world_size,
                                            target="none" if images_only else "txt", resampled=cfg.resampled))
    if len(datasets) == 1:
        return datasets[0]
    iterable = [isinstance(d, IterableDataset) for d in datasets]
    if all(iterable):
        return MixedIterableDataset(datasets, cfg.train_weights, seed=seed, mode=cfg.mix, batch_size=cfg.batch_size,
                                    rank=rank)
    if any(iterable):
        raise ValueError("data.train mixes tar shards with map-style sources; convert them to one kind")
    if cfg.mix != "sample":
        raise ValueError(f"data.mix={cfg.mix!r} mixes whole batches of tar shard sources; map-style sources "
                         "(caption indexes, folders) mix per sample: use data.mix=sample")
    return MixedDataset(datasets, cfg.train_weights, num_samples=cfg.train_num_samples, seed=seed)


def build_val_pairs(cfg, transform, tokenizer, image_size: int, seed: int,
                    images_only: bool = False) -> Dataset | None:
    """Held-out image-text pairs for validation loss and retrieval (``data.val``), at most ``val_num_samples``."""
    if cfg.val is None:
        return None
    if cfg.val == "synthetic":  # same distribution as the training pairs, other samples
        return ShapesDataset(cfg.val_num_samples, image_size=image_size, seed=seed + 1_000_003, split="train",
                             transform=transform, tokenizer=tokenizer)
    from openeva.data.sources import is_local, source_kind

    path = Path(cfg.val) if is_local(str(cfg.val)) else str(cfg.val)  # a path, or a URL (s3://, https://...)
    kind = source_kind(path)
    if kind is None:
        raise FileNotFoundError(f"validation data not found: {cfg.val} (data.val)")
    if kind == "dir":
        ds = ImageTextFolder(path, transform=transform, tokenizer=tokenizer, images_only=images_only)
    else:
        ds = CaptionDataset(path, image_key=cfg.image_key, caption_key=cfg.caption_key, transform=transform,
                            tokenizer=tokenizer, images_only=images_only)
    return Subset(ds, range(min(len(ds), cfg.val_num_samples)))
