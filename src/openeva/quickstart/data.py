"""Shapes samples rendered once into memory, shared by every quickstart stage.

The quickstart trains four models and evaluates five on the built-in synthetic shapes
(:mod:`openeva.data.synthetic`). Rendering costs about a millisecond per image, so each set is drawn once as
uint8 pixels (a 64 px image is 12 KB) and normalised per item; the teacher, the EVA-CLIP and the from-scratch
CLIP then see exactly the same pairs in the same order, which keeps their comparison fair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from openeva.data.synthetic import ShapeAttributes, ShapesDataset


class RenderedShapes(torch.utils.data.Dataset):
    """``num_samples`` captioned shapes of ``split`` in memory: ``ds[i] -> (image (3, H, W), tokens (L,))``.

    Images are normalised with ``mean``/``std``; with ``tokenizer=None`` items are images alone (MIM).
    ``captions`` and ``attributes`` give the raw caption and :class:`ShapeAttributes` of every sample.
    """

    def __init__(
        self,
        num_samples: int,
        split: str = "train",
        seed: int = 0,
        image_size: int = 64,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    ):
        source = ShapesDataset(num_samples, image_size=image_size, seed=seed, split=split)
        pixels, self.captions, self.attributes = [], [], []
        for i in range(num_samples):
            image, caption, attrs = source.render(i)
            pixels.append(np.asarray(image, dtype=np.uint8))  # (H, W, 3)
            self.captions.append(caption)
            self.attributes.append(attrs)
        shape = (0, 3, image_size, image_size)
        self.pixels = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous() if pixels \
            else torch.empty(shape, dtype=torch.uint8)  # (N, 3, H, W) uint8
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.split, self.seed = split, seed
        self.tokens = tokenizer(self.captions) if tokenizer is not None and num_samples else None  # (N, L)
        self.with_text = tokenizer is not None

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def images(self, index=slice(None)) -> torch.Tensor:
        """Normalised float images (B, 3, H, W) for an index, slice or index tensor."""
        return (self.pixels[index].float() / 255.0 - self.mean) / self.std

    def __getitem__(self, index: int):
        image = self.images(index)  # (3, H, W)
        if not self.with_text:
            return image
        return image, self.tokens[index]

    def image_only(self) -> "ImagesOnly":
        """The same samples as images alone (the MIM student never sees captions)."""
        return ImagesOnly(self)

    def labels(self, attribute: str, classes: list[str]) -> torch.Tensor:
        """(N,) class index of each sample for ``attribute`` ("shape", "color" or "pair" = "<color> <shape>")."""
        def name(a: ShapeAttributes) -> str:
            return {"shape": a.shape, "color": a.color, "pair": f"{a.color} {a.shape}"}[attribute]

        index = {c: i for i, c in enumerate(classes)}
        return torch.tensor([index[name(a)] for a in self.attributes], dtype=torch.long)


class ImagesOnly(torch.utils.data.Dataset):
    """A :class:`RenderedShapes` view whose items are images alone."""

    def __init__(self, source: RenderedShapes):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.source.images(index)  # (3, H, W)
