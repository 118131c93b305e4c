"""Shards split exactly once per epoch over ranks x workers; resampling only when asked; one persistent loader."""

import logging
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from openeva.data.loader import collate_skip_none

from openeva.data.mix import MixedDataset, MixedIterableDataset
from openeva.data.webdataset import TarShardDataset, split_shards, write_shards
from openeva.train.data import ResumableLoader

RANKS, WORKERS = 4, 2


def shard_set(tmp_path, num_shards, per_shard=3):
    n = num_shards * per_shard
    samples = [(Image.new("RGB", (4, 4)), f"c{i}") for i in range(n)]
    return write_shards(samples, tmp_path / f"s{num_shards}", shard_size=per_shard), n


@pytest.mark.parametrize("num_shards", [5, 8, 16])
def test_four_ranks_two_workers_read_each_sample_exactly_once(tmp_path, num_shards):
    paths, n = shard_set(tmp_path, num_shards)
    seen = Counter()
    for rank in range(RANKS):
        ds = TarShardDataset(paths, shuffle_shards=True, shuffle_buffer=4, seed=3, rank=rank, world_size=RANKS)
        ds.set_epoch(2)
        for worker in range(WORKERS):  # the consumer a DataLoader worker of this rank would be
            seen.update(s[1] for s in ds.iter_consumer(rank * WORKERS + worker, RANKS * WORKERS))
    assert seen == Counter(f"c{i}" for i in range(n))  # all samples, none twice
    # a real DataLoader with 2 worker processes gives rank 0 what consumers 0 and 1 read above
    ds = TarShardDataset(paths, shuffle_shards=True, shuffle_buffer=4, seed=3, rank=0, world_size=RANKS)
    ds.set_epoch(2)
    real = [t for b in DataLoader(ds, batch_size=2, num_workers=WORKERS, collate_fn=collate_skip_none) for t in b.texts]
    assert sorted(real) == sorted(s[1] for c in range(WORKERS) for s in ds.iter_consumer(c, RANKS * WORKERS))
    positions = [split_shards(num_shards, c, RANKS * WORKERS)[0] for c in range(RANKS * WORKERS)]
    if num_shards >= RANKS * WORKERS:  # whole shards: each read by one consumer only
        assert sorted(p for part in positions for p in part) == list(range(num_shards))


def test_split_shards_edges():
    assert split_shards(5, 0, 4) == ([0, 4], 1, 0) and split_shards(5, 3, 4) == ([3], 1, 0)
    assert split_shards(2, 3, 8) == ([0, 1], 8, 3)  # fewer shards than consumers: stride over samples
    with pytest.raises(ValueError, match="consumer"):
        split_shards(4, 4, 4)


def test_uneven_shards_never_duplicate_in_training_loader(tmp_path, caplog):
    """The issue's case: 5 shards over 4 ranks. A short rank ends its epoch with empty batches; nothing twice."""
    paths, n = shard_set(tmp_path, 5, per_shard=34)  # 170 samples
    seen = Counter()
    with caplog.at_level(logging.WARNING):
        for rank in range(4):
            ds = TarShardDataset(paths, rank=rank, world_size=4)
            loader = ResumableLoader(ds, 4, rank=rank, world_size=4, samples_per_epoch=n)
            batches = list(loader.batches(0))
            assert len(batches) == len(loader) == n // 16
            seen.update(t for b in batches if b is not None for t in b.texts)
    assert max(seen.values()) == 1  # before: 30 samples read twice
    assert "1 consumers read one shard more" in caplog.text and "gave 9 of the epoch's 10 batches" in caplog.text


def test_resampled_is_explicit_and_endless(tmp_path, caplog):
    paths, n = shard_set(tmp_path, 2)
    ds = TarShardDataset(paths, rank=1, world_size=4, resampled=True, seed=1)
    with caplog.at_level(logging.WARNING):
        loader = ResumableLoader(ds, 4, rank=0, world_size=4, samples_per_epoch=64)
    assert "resampled (shards drawn with replacement" in caplog.text
    texts = [t for b in loader.batches(0) for t in b.texts]
    assert len(texts) == 16 and set(texts) <= {f"c{i}" for i in range(n)}  # more than the data: by choice
    exact = TarShardDataset(paths, rank=0, world_size=4)
    assert "exactly once, each consumer streams all 2 shards" in exact.describe_split(2)


def test_one_persistent_loader_follows_the_epoch(tmp_path):
    paths, n = shard_set(tmp_path, 4)

    def epochs(num_workers):
        ds = TarShardDataset(paths, shuffle_shards=True, seed=5)
        loader = ResumableLoader(ds, 3, samples_per_epoch=n, num_workers=num_workers)
        out = [[t for b in loader.batches(e) for t in b.texts] for e in range(3)]
        return out, loader._loader

    in_process, _ = epochs(0)
    with_workers, dataloader = epochs(1)
    assert dataloader.persistent_workers and dataloader.num_workers == 1
    assert with_workers == in_process  # the epoch reached the persistent worker (shard order follows it)
    assert in_process[0] != in_process[1] and sorted(in_process[0]) == sorted(in_process[1])


class Numbers(IterableDataset):
    def __init__(self, tag, n):
        self.tag, self.n = tag, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return ((self.tag, i) for i in range(self.n))


def test_mixer_batch_mode_and_size_weights():
    mix = MixedIterableDataset([Numbers("a", 40), Numbers("b", 20)], mode="batch", batch_size=4, seed=0)
    out = list(mix)
    assert sorted(out) == sorted([("a", i) for i in range(40)] + [("b", i) for i in range(20)])
    blocks = [{tag for tag, _ in out[i:i + 4]} for i in range(0, len(out), 4)]
    assert sum(len(b) > 1 for b in blocks) <= 1  # whole batches from one source (one may straddle an end)
    # sample mode, default weights = sizes: "a" (3x larger) dominates the first half
    first = Counter(t for t, _ in list(MixedIterableDataset([Numbers("a", 300), Numbers("b", 100)]))[:200])
    assert first["a"] > 2 * first["b"]
    # seeded per rank: two ranks do not draw the same source sequence
    def tags(rank):
        return [t for t, _ in MixedIterableDataset([Numbers("a", 50), Numbers("b", 50)], rank=rank)][:40]
    assert tags(0) != tags(1) and tags(1) == tags(1)
    with pytest.raises(ValueError, match="batch size"):
        MixedIterableDataset([Numbers("a", 1)], mode="batch")
    with pytest.raises(ValueError, match="mix mode"):
        MixedIterableDataset([Numbers("a", 1)], mode="round-robin")


class CountingTransform:
    """A transform that counts the images it decodes (in this process)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return image.size


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_at_the_sample_without_decoding_what_it_skips(tmp_path, num_workers):
    paths, n = shard_set(tmp_path, 4, per_shard=6)  # 24 samples, 8 batches of 3
    transform = CountingTransform()
    ds = TarShardDataset(paths, transform=transform, shuffle_shards=True, shuffle_buffer=5, seed=2)
    loader = ResumableLoader(ds, 3, samples_per_epoch=n, num_workers=num_workers)
    whole = [list(b.texts) for b in loader.batches(1)]
    for start in (3, 4):  # worker 0 or worker 1 first, with two workers
        resumed = [list(b.texts) for b in loader.batches(1, start)]
        assert resumed == whole[start:]  # the shuffle buffer refilled from the epoch's start: same samples
    assert [list(b.texts) for b in loader.batches(1)] == whole  # a later full epoch starts at 0 again
    if num_workers == 0:
        transform.calls = 0
        list(loader.batches(1, 6))
        assert transform.calls == n - 6 * 3  # only the samples after the position are decoded


class NoisySize:
    """A random augmentation: the image size plus a draw of the per-sample random stream (counted)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return torch.tensor([*image.size, torch.rand(()).item()])  # (3,)


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_mix_resumes_at_the_sample_without_decoding_what_it_skips(tmp_path, mode, num_workers):
    """A resumed mix gives the uninterrupted run's batches (the same samples, augmentations and sources), its
    sources' shuffle buffers refilled from the epoch's start; nothing before the position is decoded."""
    transform = NoisySize()

    def sources():
        a, _ = shard_set(tmp_path / "a", 4, per_shard=6)
        b, _ = shard_set(tmp_path / "b", 2, per_shard=6)
        return [TarShardDataset(p, transform=transform, shuffle_shards=True, shuffle_buffer=5, seed=s)
                for p, s in ((a, 1), (b, 2))]

    def loader():
        mix = MixedIterableDataset(sources(), seed=7, mode=mode, batch_size=3)
        return ResumableLoader(mix, 3, samples_per_epoch=36, num_workers=num_workers)

    def rows(batches):
        return [(list(b.texts), b.images.tolist()) for b in batches]

    whole = rows(loader().batches(1))
    assert len(whole) == 12 and sorted(t for texts, _ in whole for t in texts) == sorted(
        [f"c{i}" for i in range(24)] + [f"c{i}" for i in range(12)])
    for start in (3, 4):  # with two workers: worker 1's batch or worker 0's comes first
        assert rows(loader().batches(1, start)) == whole[start:]
    if num_workers == 0:
        transform.calls = 0
        assert len(list(loader().batches(1, 7))) == 5
        assert transform.calls == 5 * 3  # only the samples of the batches after the position
    # a mix with a source that has no raw stream leaves the skipping to the loader (decode and drop)
    assert not hasattr(MixedIterableDataset([Numbers("a", 4), *sources()[:1]]), "set_position")


def test_resume_without_shuffle_buffer_steps_over_tar_members_unread(tmp_path, monkeypatch):
    import tarfile

    paths, n = shard_set(tmp_path, 3, per_shard=4)  # 12 samples of 2 members (jpg, txt)
    ds = TarShardDataset(paths)
    whole = [s[1] for s in ds.iter_consumer(0, 1)]
    reads = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: (reads.append(m.name), real(self, m))[1])
    assert [s[1] for s in ds.iter_consumer(0, 1, skip=7)] == whole[7:]
    assert len(reads) == (n - 7) * 2  # the first 7 samples' members were stepped over, never read


class Items(torch.utils.data.Dataset):
    def __init__(self, tag, n):
        self.tag, self.n = tag, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.tag, i


def test_persistent_workers_follow_the_epoch_of_a_map_style_mix():
    def epochs(num_workers):
        mix = MixedDataset([Items("a", 6), Items("b", 3)], weights=[1, 1], num_samples=8, seed=4)
        loader = ResumableLoader(mix, 4, num_workers=num_workers, shuffle=False)
        return [[(t, int(i)) for b in loader.batches(e) for t, i in zip(*b)] for e in range(3)]

    in_process = epochs(0)
    assert in_process[0] != in_process[1]  # each epoch its own draw of the plan
    assert epochs(1) == in_process  # the worker, made once, redraws the plan when the shared epoch changes
