"""The fine-tune recipes' RandAugment must be valid at every magnitude it can sample (issue 13, item 3)."""

import random

import numpy as np
import pytest
from PIL import Image

from openeva.train.augment_bounds import bound_posterize
from openeva.train.finetune_task import EVA02_AUTO_AUGMENT, finetune_transforms

PRE = {"size": (16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
POLICIES = [EVA02_AUTO_AUGMENT, "rand-m9-mstd0.5", "rand-m9-mstd101", "rand-m10-n3-inc1", "augmix-m5", "v0", "original"]


def _ops(train):
    return [op for t in train.transforms for op in getattr(t, "ops", [])]


def _image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8))


def test_every_op_is_valid_at_every_magnitude_of_the_recipe():
    train, _ = finetune_transforms(PRE, EVA02_AUTO_AUGMENT)
    ops = _ops(train)
    assert any(op.name == "PosterizeIncreasing" for op in ops)
    img = _image(0)
    for op in ops:
        op.prob, op.magnitude_std = 1.0, 0.0  # always applied, at exactly the forced magnitude
        for magnitude in [m / 2 for m in range(0, 25)] + [-3.0, 15.0, 100.0]:  # 0..12, below and beyond the clip
            op.magnitude = magnitude
            out = op(img)
            assert out.size == img.size, (op.name, magnitude)


def test_posterize_keeps_at_least_one_bit_where_timm_asks_for_zero():
    train, _ = finetune_transforms(PRE, EVA02_AUTO_AUGMENT)
    post = next(op for op in _ops(train) if op.name == "PosterizeIncreasing")
    assert post.level_fn(10.0, post.hparams) == (1,)  # timm alone gives 0 bits here
    assert post.level_fn(0.0, post.hparams) == (4,)  # weak end unchanged


@pytest.mark.parametrize("policy", POLICIES)
def test_recipes_draw_many_times_without_raising(policy):
    random.seed(0)
    np.random.seed(0)
    train, _ = finetune_transforms(PRE, policy)
    for i in range(1500):  # the issue saw about one failure in 1,500 calls
        assert train(_image(i % 7)).shape == (3, 16, 16)


def test_bound_posterize_is_idempotent_and_leaves_other_transforms_alone():
    train, _ = finetune_transforms(PRE, EVA02_AUTO_AUGMENT)
    post = next(op for op in _ops(train) if op.name == "PosterizeIncreasing")
    fn = post.level_fn
    bound_posterize(train)
    assert post.level_fn is fn
    plain = object()
    assert bound_posterize(plain) is plain
