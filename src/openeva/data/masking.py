"""Block-wise masking for masked image modeling (BEiT, arXiv 2106.08254, Alg. 1; used by EVA-02).

EVA-02 masks 105 of the 256 patches of a 16x16 grid (224 px, patch 14; ~40%) in rectangular blocks of at
least 16 patches with aspect ratio between 0.3 and 1/0.3. Blocks (not scattered patches) force the student to
predict teacher features from context rather than from neighbouring visible patches.

:class:`BlockMaskGenerator` draws masks exactly as BEiT's ``MaskingGenerator`` (EVA-02's
``masking_generator.py``) does, so the masks have EVA's distribution:

1. Repeat "paste a block" while fewer than ``num_masking_patches`` are masked, with
   ``budget = min(remaining, max_num_patches)``: up to 10 attempts to draw a block (target area uniform
   between ``min_num_patches`` and ``budget``, log-uniform aspect ratio, height and width rounded to integers
   and kept as rounded, even where the rounded area or aspect falls outside the bounds), skipped unless it is
   strictly smaller than the grid in both directions, placed uniformly at random, and pasted if it adds at
   least one and at most ``budget`` new patches (blocks may overlap earlier ones).
2. Stop when the count is reached or a paste fails on all 10 attempts. Nothing tops the mask up.

So a mask may hold a few patches fewer than ``num_masking_patches``, never more: with EVA-02's settings 104.4
on average, exactly 105 in about 65% of masks, and almost no isolated masked patch (about 0.03%). Losses
therefore weight the masked patches of each image (:func:`openeva.losses.mim.mim_cosine_loss` with ``mask=``)
instead of assuming a fixed count.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

# EVA-02 / BEiT default: 105 of 256 patches on a 16x16 grid.
EVA02_NUM_MASKING_PATCHES = 105
EVA02_MASK_RATIO = 105 / 256
_ATTEMPTS_PER_BLOCK = 10


def sample_block_shape(
    rng: random.Random,
    budget: int,
    min_num_patches: int,
    min_aspect: float,
    max_aspect: float,
    grid_size: tuple[int, int],
) -> tuple[int, int] | None:
    """Draw one block shape ``(h, w)`` as BEiT does, or None when it does not fit strictly inside the grid.

    Target area uniform between ``min_num_patches`` and ``budget`` (either may be the larger: BEiT passes them
    to ``random.uniform`` as they are), aspect ratio h/w log-uniform in [min_aspect, max_aspect], h and w
    rounded to integers and returned as rounded (their product and ratio may fall a little outside the bounds;
    h or w may be 0, which no paste accepts). BEiT places a block only when ``h < H`` and ``w < W``.
    """
    height, width = grid_size
    target_area = rng.uniform(min_num_patches, budget)
    aspect = math.exp(rng.uniform(math.log(min_aspect), math.log(max_aspect)))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if h < height and w < width:
        return h, w
    return None


def _as_grid_size(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    grid = tuple(grid_size)
    if len(grid) != 2 or not all(isinstance(v, int) and v > 0 for v in grid):
        raise ValueError(f"grid_size must be a positive int or a pair of positive ints, got {grid_size!r}")
    return grid  # type: ignore[return-value]


class BlockMaskGenerator:
    """Draw block-wise MIM masks as BEiT / EVA-02: ``BoolTensor[H, W]``, True = masked, at most
    ``num_masking_patches`` True (a few fewer when block pasting stops short; see the module docstring).

    Give either ``num_masking_patches`` or ``mask_ratio`` (``round(mask_ratio * H * W)``); with neither,
    the EVA-02 ratio 105/256 is used (exactly 105 on a 16x16 grid). ``max_num_patches`` (largest block)
    defaults to ``num_masking_patches``; ``max_aspect`` defaults to ``1 / min_aspect``.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int] = (16, 16),
        num_masking_patches: int | None = None,
        min_num_patches: int = 16,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        mask_ratio: float | None = None,
    ) -> None:
        self.grid_size = _as_grid_size(grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        if num_masking_patches is not None and mask_ratio is not None:
            raise ValueError(
                f"give num_masking_patches ({num_masking_patches}) or mask_ratio ({mask_ratio}), not both"
            )
        if mask_ratio is None and num_masking_patches is None:
            mask_ratio = EVA02_MASK_RATIO
        if mask_ratio is not None:
            if not (isinstance(mask_ratio, (int, float)) and 0.0 <= mask_ratio <= 1.0):
                raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio!r}")
            num_masking_patches = int(round(mask_ratio * num_patches))
        if not isinstance(num_masking_patches, int) or not 0 <= num_masking_patches <= num_patches:
            raise ValueError(
                f"num_masking_patches must be an int in [0, {num_patches}] for grid {self.grid_size}, "
                f"got {num_masking_patches!r}"
            )
        if not isinstance(min_num_patches, int) or min_num_patches < 1:
            raise ValueError(f"min_num_patches must be a positive int, got {min_num_patches!r}")
        if min_num_patches > num_patches:
            raise ValueError(
                f"min_num_patches={min_num_patches} exceeds the {num_patches} patches of grid {self.grid_size}"
            )
        if max_num_patches is None:
            max_num_patches = max(num_masking_patches, min_num_patches)
        if not isinstance(max_num_patches, int) or max_num_patches < min_num_patches:
            raise ValueError(
                f"max_num_patches must be an int >= min_num_patches ({min_num_patches}), got {max_num_patches!r}"
            )
        if not (isinstance(min_aspect, (int, float)) and min_aspect > 0):
            raise ValueError(f"min_aspect must be > 0, got {min_aspect!r}")
        if max_aspect is None:
            max_aspect = 1.0 / min_aspect
        if not (isinstance(max_aspect, (int, float)) and max_aspect >= min_aspect):
            raise ValueError(f"max_aspect must be >= min_aspect ({min_aspect}), got {max_aspect!r}")
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid_size={self.grid_size}, num_masking_patches={self.num_masking_patches}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"min_aspect={self.min_aspect:.3g}, max_aspect={self.max_aspect:.3g})"
        )

    def sample_block(self, rng: random.Random, budget: int) -> tuple[int, int] | None:
        """One block shape drawn with this generator's bounds (None when it does not fit inside the grid)."""
        return sample_block_shape(rng, budget, self.min_num_patches, self.min_aspect, self.max_aspect, self.grid_size)

    def _paste_block(self, mask: np.ndarray, rng: random.Random, budget: int) -> int:
        """BEiT's ``_mask``: up to 10 draws; paste the first block adding 1..budget new patches; return how many
        were added (0 = every attempt failed)."""
        height, width = self.grid_size
        for _ in range(_ATTEMPTS_PER_BLOCK):
            shape = self.sample_block(rng, budget)
            if shape is None:
                continue
            h, w = shape
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            window = mask[top : top + h, left : left + w]  # (h, w) view
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new
        return 0

    def generate_blocks(self, rng: random.Random) -> np.ndarray:
        """The mask as BEiT draws it: ``bool[H, W]`` with at most ``num_masking_patches`` True."""
        mask = np.zeros(self.grid_size, dtype=bool)
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            added = self._paste_block(mask, rng, budget)
            if added == 0:
                break
            count += added
        return mask

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one mask ``BoolTensor[H, W]``; deterministic given ``generator`` (torch's global RNG if None)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return torch.from_numpy(self.generate_blocks(random.Random(seed)))

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``batch_size`` independent masks: ``BoolTensor[B, H, W]``."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if batch_size == 0:
            return torch.zeros((0, *self.grid_size), dtype=torch.bool)
        return torch.stack([self(generator) for _ in range(batch_size)])  # (B, H, W)
