"""Indexed images that decode on demand (files, tar members, pixel arrays) and the dataset that serves them.

An :class:`ImageList` knows where each image is (``ids`` name them for reports) and opens one with
:func:`~openeva.data.images.open_rgb`; :class:`LabelledImages` turns one into ``(transform(image), target)``
samples, ``None`` (counted in ``skipped``) for any image that fails to load or transform.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from openeva.data.images import open_rgb, prepare_sample
from openeva.data.webdataset import TarMember

__all__ = ["ArrayImages", "FileImages", "ImageList", "LabelledImages", "TarImages", "hash_strings"]


def hash_strings(items: Iterable[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class ImageList:
    """An indexable list of images that decode on demand; ``ids`` name each image for reports."""

    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Image.Image:
        """Return the RGB image; raises on decode failure (see ``DECODE_ERRORS``)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return hash_strings(self.ids)


class FileImages(ImageList):
    def __init__(self, paths: Sequence[str]):
        self.ids = [str(p) for p in paths]

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.ids[index])


class TarImages(ImageList):
    """Images stored inside tar shards, read by seeking to the member's data (no extraction)."""

    def __init__(self, members: Sequence[TarMember]):
        self.members = list(members)
        self.ids = [f"{m.tar_path}::{m.name}" for m in self.members]

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.members[index].read())


class ArrayImages(ImageList):
    """uint8 pixel arrays (N, H, W) or (N, H, W, 3), e.g. from IDX files."""

    def __init__(self, pixels: np.ndarray, id_prefix: str):
        if pixels.ndim not in (3, 4):
            raise ValueError(f"expected image array of shape (N, H, W[, C]), got {pixels.shape}")
        self.pixels = pixels
        self.ids = [f"{id_prefix}[{i}]" for i in range(len(pixels))]

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.pixels[index])).convert("RGB")

    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()


class LabelledImages(torch.utils.data.Dataset):
    """``ds[i] -> (transform(image i), targets[i]) | None`` over an :class:`ImageList`.

    ``targets`` default to the positions themselves (``(image, i)``: what feature encoding needs to map rows
    back). A sample whose image is missing, corrupt, or whose transform raises is ``None`` and counted in
    ``skipped`` (:func:`~openeva.data.images.prepare_sample`); ``collate_skip_none`` drops it.
    """

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], Any] | None,
                 targets: Sequence[Any] | None = None):
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(targets)} targets for {len(images)} images")
        self.images, self.transform, self.targets = images, transform, targets
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        image = prepare_sample(partial(self.images.load, index), self.transform, self.skipped,
                               self.images.ids[index])
        if image is None:
            return None
        return image, index if self.targets is None else self.targets[index]
