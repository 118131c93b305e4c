"""Stratified subsets and held-out splits of a labelled source, by position, in a seeded order.

One split rule for every room that subsamples labelled data (``openeva quickstart --data`` draws its training and
validation images here): each class keeps its share of the picked positions (at least one), so a small subsample
of an imbalanced set still holds every class.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["stratified_holdout", "stratified_subset"]


def stratified_subset(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """At most ``n`` positions of ``labels``, the same fraction of each class (at least one), sorted.

    All positions when ``n`` covers them; otherwise each class contributes ``round(n * share)`` positions, drawn
    in an order seeded by ``seed``.
    """
    if n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    picked: list[int] = []
    for _, positions in sorted(by_class.items()):
        rng.shuffle(positions)
        picked += positions[:max(1, round(n * len(positions) / len(labels)))]
    return sorted(picked[:n] if len(picked) > n else picked)


def stratified_holdout(labels: Sequence[int], n_holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """-> (kept, held): ``n_holdout`` stratified positions held out (:func:`stratified_subset`), the rest kept.

    Both lists are sorted positions of ``labels`` and together cover every position once.
    """
    held = stratified_subset(labels, n_holdout, seed)
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], held
