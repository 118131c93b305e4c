"""The data layer's stratified subset and held-out split: every class keeps its share (at least one), seeded."""

from __future__ import annotations

from collections import Counter

from openeva.data.split import stratified_holdout, stratified_subset


def test_a_subset_keeps_each_class_share_and_is_seeded():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    picked = stratified_subset(labels, 20, seed=0)
    assert Counter(labels[i] for i in picked) == {0: 16, 1: 3, 2: 1}
    assert picked == sorted(picked) == stratified_subset(labels, 20, seed=0) != stratified_subset(labels, 20, seed=1)
    assert stratified_subset(labels, 500, seed=0) == list(range(100))  # asking for more: everything
    assert len(stratified_subset(labels, 3, seed=0)) == 3  # never more than asked for


def test_a_holdout_partitions_the_positions():
    labels = [i % 4 for i in range(40)]
    kept, held = stratified_holdout(labels, 8, seed=3)
    assert sorted(kept + held) == list(range(40)) and not set(kept) & set(held)
    assert Counter(labels[i] for i in held) == {0: 2, 1: 2, 2: 2, 3: 2}
