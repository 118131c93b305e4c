"""Keep timm's RandAugment / AutoAugment valid at every magnitude it can sample.

timm's posterize ops map a magnitude to the number of bits kept: ``PosterizeIncreasing`` (the EVA-02 recipe's
``rand-m9-mstd0.5-inc1``) keeps ``4 - int(m / 10 * 4)`` bits, so 0 bits at the top magnitude 10, and plain
``Posterize`` keeps 0 bits below magnitude 2.5. A magnitude drawn from N(9, 0.5) reaches the clip at 10 in
about one draw in 44, and recent Pillow (13 here) rejects 0 bits (``ValueError: bits must be between or equal
to 1 and 8``) where older Pillow returned a black image. Here the bits are clamped to [1, 8]: 1 bit is the strongest posterize Pillow
accepts, and every other op keeps its full magnitude range, so the recipe string stays the published one.
"""

from __future__ import annotations

from typing import Callable, Iterator

MIN_POSTERIZE_BITS = 1
MAX_POSTERIZE_BITS = 8


class _BoundedBits:
    """A posterize level function whose bits never leave [1, 8] (picklable for DataLoader workers)."""

    def __init__(self, level_fn: Callable):
        self.level_fn = level_fn

    def __call__(self, level, hparams):
        (bits,) = self.level_fn(level, hparams)
        return (min(max(int(bits), MIN_POSTERIZE_BITS), MAX_POSTERIZE_BITS),)


def _augment_ops(transform) -> Iterator:
    """timm ``AugmentOp`` objects inside a Compose / RandAugment / AutoAugment, at any depth."""
    children = getattr(transform, "transforms", None)
    if isinstance(children, (list, tuple)):
        for child in children:
            yield from _augment_ops(child)
    ops = getattr(transform, "ops", None)  # timm RandAugment
    if isinstance(ops, (list, tuple)):
        for op in ops:
            yield from _augment_ops(op)
    policy = getattr(transform, "policy", None)  # timm AutoAugment: a list of sub-policies (lists of ops)
    if isinstance(policy, (list, tuple)):
        for sub in policy:
            for op in (sub if isinstance(sub, (list, tuple)) else [sub]):
                yield from _augment_ops(op)
    if hasattr(transform, "level_fn") and hasattr(transform, "aug_fn"):
        yield transform


def bound_posterize(transform):
    """Clamp the bits of every posterize op inside ``transform`` to [1, 8], in place; returns ``transform``.

    Idempotent; transforms without timm augment ops are returned unchanged.
    """
    for op in _augment_ops(transform):
        if str(getattr(op, "name", "")).startswith("Posterize") and not isinstance(op.level_fn, _BoundedBits):
            op.level_fn = _BoundedBits(op.level_fn)
    return transform
