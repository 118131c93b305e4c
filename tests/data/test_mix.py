from collections import Counter

import pytest
import torch
from torch.utils.data import IterableDataset

from torch.utils.data import DataLoader

from openeva.data.loader import collate_skip_none
from openeva.data.mix import MixedDataset, MixedIterableDataset
from openeva.data.synthetic import ShapesDataset


class Tagged:
    """Map-style source whose samples say where they came from."""

    def __init__(self, name, n):
        self.name, self.n = name, n
        self.skipped = Counter({"empty_caption": 1})

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return (self.name, i)


class Stream(IterableDataset):
    def __init__(self, name, n):
        self.name, self.n, self.epoch = name, n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter([(self.name, i) for i in range(self.n)])


def test_weights_give_exact_proportions_and_cover_sources():
    mix = MixedDataset([Tagged("a", 10), Tagged("b", 1000)], weights=[0.7, 0.3], num_samples=100, seed=0)
    samples = [mix[i] for i in range(len(mix))]
    counts = Counter(name for name, _ in samples)
    assert counts == {"a": 70, "b": 30}
    a_indices = Counter(i for name, i in samples if name == "a")
    assert a_indices == {i: 7 for i in range(10)}  # small source repeated evenly (7 full passes)
    b_indices = [i for name, i in samples if name == "b"]
    assert len(set(b_indices)) == 30  # large source subsampled without repeats
    assert mix.skipped == {"empty_caption": 2}


def test_deterministic_by_seed_and_epoch():
    def plan(seed, epoch=0):
        mix = MixedDataset([Tagged("a", 5), Tagged("b", 7)], weights=[1, 1], num_samples=30, seed=seed)
        mix.set_epoch(epoch)
        return [mix[i] for i in range(30)]

    assert plan(0) == plan(0)
    assert plan(0) != plan(1)
    assert plan(0) != plan(0, epoch=1)


def test_defaults_concatenate_and_shuffle():
    mix = MixedDataset([Tagged("a", 3), Tagged("b", 4)])
    assert len(mix) == 7
    assert sorted(mix[i] for i in range(7)) == [("a", 0), ("a", 1), ("a", 2)] + [("b", i) for i in range(4)]
    with pytest.raises(IndexError):
        mix[7]


def test_zero_weight_source_is_never_used():
    mix = MixedDataset([Tagged("a", 3), Tagged("b", 0)], weights=[1, 0], num_samples=9)
    assert {mix[i][0] for i in range(9)} == {"a"}


def test_mixed_real_datasets_through_loader():
    train = ShapesDataset(8, image_size=16, split="train", transform=lambda im: torch.zeros(3, 16, 16))
    held = ShapesDataset(8, image_size=16, split="heldout", transform=lambda im: torch.ones(3, 16, 16))
    mix = MixedDataset([train, held], weights=[0.5, 0.5], num_samples=16, seed=3)
    batches = list(DataLoader(mix, batch_size=4, collate_fn=collate_skip_none))
    images = torch.cat([b.images for b in batches])
    assert images.shape == (16, 3, 16, 16) and images.mean().item() == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": [1.0]}, "weights"),
    ({"weights": [1.0, -1.0]}, "weights"),
    ({"weights": [0.0, 0.0]}, "weights"),
    ({"weights": [1.0, float("nan")]}, "weights"),
    ({"num_samples": -3}, "num_samples"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedDataset([Tagged("a", 2), Tagged("b", 2)], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        MixedDataset([Tagged("a", 2), Tagged("b", 0)], weights=[1, 1])
    with pytest.raises(ValueError, match="map-style"):
        MixedDataset([Stream("s", 3)])
    with pytest.raises(ValueError, match="at least one"):
        MixedDataset([])


def test_mixed_iterable_interleaves_until_all_exhausted():
    mix = MixedIterableDataset([Stream("a", 30), Stream("b", 10)], weights=[3, 1], seed=0)
    out = list(mix)
    assert sorted(out) == sorted([("a", i) for i in range(30)] + [("b", i) for i in range(10)])
    assert [x for x in out if x[0] == "b"] == [("b", i) for i in range(10)]  # source order kept
    first_half = Counter(name for name, _ in out[:20])
    assert first_half["a"] > first_half["b"]  # weights favour "a"
    assert out == list(MixedIterableDataset([Stream("a", 30), Stream("b", 10)], weights=[3, 1], seed=0))
    assert out != list(MixedIterableDataset([Stream("a", 30), Stream("b", 10)], weights=[3, 1], seed=1))
    mix.set_epoch(4)
    assert all(ds.epoch == 4 for ds in mix.datasets)
    with pytest.raises(ValueError, match="weights"):
        MixedIterableDataset([Stream("a", 1)], weights=[1, 2])
