import random

import numpy as np
import pytest
import torch

from openeva.data.masking import BlockMaskGenerator, sample_block_shape


def component_sizes(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of True cells."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    for i in range(height):
        for j in range(width):
            if mask[i, j] and not seen[i, j]:
                stack, size = [(i, j)], 0
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    size += 1
                    for x, y in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= x < height and 0 <= y < width and mask[x, y] and not seen[x, y]:
                            seen[x, y] = True
                            stack.append((x, y))
                sizes.append(size)
    return sizes


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 105),  # EVA-02 default on 16x16
        ({"grid_size": (14, 14), "mask_ratio": 0.4}, round(0.4 * 196)),
        ({"grid_size": (8, 12), "num_masking_patches": 50, "min_num_patches": 4}, 50),
        ({"grid_size": 16, "num_masking_patches": 0}, 0),
        ({"grid_size": 16, "num_masking_patches": 256}, 256),
        ({"grid_size": 16, "num_masking_patches": 10}, 10),  # fewer than one minimal block
        ({"grid_size": (16, 16), "mask_ratio": 0.75, "min_aspect": 0.5, "max_aspect": 1.5}, 192),
    ],
)
def test_masked_count_is_exact(kwargs, expected):
    gen = BlockMaskGenerator(**kwargs)
    assert gen.num_masking_patches == expected
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        mask = gen(g)
        assert mask.dtype == torch.bool
        assert tuple(mask.shape) == gen.grid_size
        assert int(mask.sum()) == expected


@pytest.mark.parametrize("min_patches, min_aspect, max_aspect", [(16, 0.3, None), (4, 0.5, 3.0), (9, 1.0, 1.0)])
def test_block_shapes_respect_bounds(min_patches, min_aspect, max_aspect):
    max_aspect_eff = max_aspect if max_aspect is not None else 1 / min_aspect
    rng = random.Random(0)
    accepted = 0
    for budget in (1, 10, 40, 105):
        for _ in range(2000):
            shape = sample_block_shape(rng, budget, min_patches, 105, min_aspect, max_aspect_eff, (16, 16))
            if shape is None:
                continue
            accepted += 1
            h, w = shape
            assert min_patches <= h * w <= 105
            assert min_aspect <= h / w <= max_aspect_eff
            assert 1 <= h <= 16 and 1 <= w <= 16
    assert accepted > 2000  # most draws are valid shapes


def test_block_only_masks_have_large_components():
    # Every component of the block-pasting stage contains at least one whole block of >= min_num_patches.
    gen = BlockMaskGenerator(grid_size=(16, 16), num_masking_patches=105, min_num_patches=16)
    rng = random.Random(1)
    for _ in range(200):
        mask = gen.generate_blocks(rng)
        assert mask.sum() <= 105
        assert min(component_sizes(mask)) >= 16


def test_masks_are_blocky_not_scattered():
    gen = BlockMaskGenerator()
    g = torch.Generator().manual_seed(0)
    block_components = np.mean([len(component_sizes(gen(g).numpy())) for _ in range(100)])
    random_components = []
    for _ in range(100):
        flat = torch.zeros(256, dtype=torch.bool)
        flat[torch.randperm(256, generator=g)[:105]] = True
        random_components.append(len(component_sizes(flat.view(16, 16).numpy())))
    assert block_components < 8 < np.mean(random_components)


def test_deterministic_given_generator_and_draws_differ():
    gen = BlockMaskGenerator()
    a = [gen(torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    g = torch.Generator().manual_seed(7)
    draws = gen.batch(20, g)
    assert draws.shape == (20, 16, 16) and draws.dtype == torch.bool
    assert torch.equal(draws[0], a[0])
    assert len({tuple(m.flatten().tolist()) for m in draws}) == 20
    torch.manual_seed(3)
    first = gen()
    torch.manual_seed(3)
    assert torch.equal(first, gen())
    assert gen.batch(0).shape == (0, 16, 16)


def test_ratio_changes_mask_size():
    counts = [int(BlockMaskGenerator(mask_ratio=r)().sum()) for r in (0.1, 0.4, 0.6)]
    assert counts == [round(0.1 * 256), round(0.4 * 256), round(0.6 * 256)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_masking_patches": 10, "mask_ratio": 0.4}, "not both"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"num_masking_patches": 300}, "num_masking_patches"),
        ({"num_masking_patches": -1}, "num_masking_patches"),
        ({"grid_size": (0, 16)}, "grid_size"),
        ({"grid_size": (16, 16, 1)}, "grid_size"),
        ({"min_num_patches": 0}, "min_num_patches"),
        ({"min_num_patches": 300}, "min_num_patches"),
        ({"min_num_patches": 16, "max_num_patches": 8}, "max_num_patches"),
        ({"min_aspect": 0.0}, "min_aspect"),
        ({"min_aspect": 0.5, "max_aspect": 0.4}, "max_aspect"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockMaskGenerator(**kwargs)
