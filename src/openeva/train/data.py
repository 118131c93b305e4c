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
* Iterable datasets (tar shards) are ordered by ``(seed, epoch)`` themselves; a resumed run re-reads and drops
  the batches before its position (tar streams cannot seek), under the same seeded streams.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from openeva.data.captions import CaptionDataset, ImageTextFolder
from openeva.data.labelled import detect_format
from openeva.data.loader import collate_skip_none
from openeva.data.mix import MixedDataset, MixedIterableDataset
from openeva.data.synthetic import ShapesDataset
from openeva.data.webdataset import TarShardDataset, shard_paths

logger = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``(seed, epoch, index)``), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block under its own torch (CPU), numpy and Python random state, restoring the caller's after."""
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
    """Batch sampler: this rank's slice of global batches ``start .. n - 1`` of one epoch's order."""

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
    ``None`` for a batch whose every sample failed (see :mod:`openeva.data.loader`).
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
        num_workers: int = 0,
        collate_fn: Callable = collate_skip_none,
        pin_memory: bool = False,
        samples_per_epoch: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
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

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s sample order (map-style datasets)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"batch position {start} outside the epoch's {self.num_batches} batches")
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self.iterable:
            yield from self._iterable_batches(epoch, start)
            return
        sampler = _EpochBatches(self.order(epoch), epoch, start, self.num_batches, self.batch_size, self.rank,
                                self.world_size)
        # An explicit generator: creating the iterator must not draw from the global (training) RNG.
        loader = DataLoader(_SeededItems(self.dataset, self.seed), batch_sampler=sampler,
                            collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank)))
        yield from loader

    def _iterable_batches(self, epoch: int, start: int) -> Iterator[Any]:
        k, passes = 0, 0
        while k < self.num_batches:
            loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank,
                                                                                    passes)))
            it = iter(loader)
            produced = 0
            while k < self.num_batches:
                with seeded_rng(derive_seed(self.seed, epoch, self.rank, k)):  # workers=0: transforms in here
                    batch = next(it, StopIteration)
                if batch is StopIteration:
                    break
                produced += 1
                if k >= start:
                    yield batch
                k += 1
            if k < self.num_batches:
                if produced == 0:
                    raise ValueError("the iterable training dataset produced no batch")
                passes += 1
                logger.info("training stream ran out after %d batches in epoch %d; reading it again", k, epoch)


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
                                            target="none" if images_only else "txt"))
    if len(datasets) == 1:
        return datasets[0]
    iterable = [isinstance(d, IterableDataset) for d in datasets]
    if all(iterable):
        return MixedIterableDataset(datasets, cfg.train_weights, seed=seed)
    if any(iterable):
        raise ValueError("data.train mixes tar shards with map-style sources; convert them to one kind")
    return MixedDataset(datasets, cfg.train_weights, num_samples=cfg.train_num_samples, seed=seed)


def build_val_pairs(cfg, transform, tokenizer, image_size: int, seed: int,
                    images_only: bool = False) -> Dataset | None:
    """Held-out image-text pairs for validation loss and retrieval (``data.val``), at most ``val_num_samples``."""
    if cfg.val is None:
        return None
    if cfg.val == "synthetic":  # same distribution as the training pairs, other samples
        return ShapesDataset(cfg.val_num_samples, image_size=image_size, seed=seed + 1_000_003, split="train",
                             transform=transform, tokenizer=tokenizer)
    path = Path(cfg.val)
    if not path.exists():
        raise FileNotFoundError(f"validation data not found: {cfg.val} (data.val)")
    if path.is_dir():
        ds = ImageTextFolder(path, transform=transform, tokenizer=tokenizer, images_only=images_only)
    else:
        ds = CaptionDataset(path, image_key=cfg.image_key, caption_key=cfg.caption_key, transform=transform,
                            tokenizer=tokenizer, images_only=images_only)
    return Subset(ds, range(min(len(ds), cfg.val_num_samples)))
