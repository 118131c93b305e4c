import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from torch.utils.data import DataLoader

from openeva.data.loader import collate_skip_none
from openeva.data.webdataset import TarShardDataset, expand_urls, write_shards


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, H, W)


def make_samples(n):
    return [(Image.new("RGB", (8, 8), (i * 10 % 256, 0, 0)), f"caption {i}") for i in range(n)]


def captions(samples):
    return [s[1] for s in samples if s is not None]


@pytest.fixture
def shards(tmp_path):
    return write_shards(make_samples(23), tmp_path / "shards", shard_size=5)  # 5 shards: 5,5,5,5,3


def test_expand_urls():
    assert expand_urls("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_urls("a-{x,y}-{8..10}.tar") == ["a-x-8.tar", "a-x-9.tar", "a-x-10.tar", "a-y-8.tar",
                                                  "a-y-9.tar", "a-y-10.tar"]
    assert expand_urls("a.tar::b-{1..2}.tar") == ["a.tar", "b-1.tar", "b-2.tar"]
    assert expand_urls(["x.tar", "y.tar"]) == ["x.tar", "y.tar"]
    with pytest.raises(ValueError, match="empty brace range"):
        expand_urls("s-{5..1}.tar")


def test_write_and_read_back_in_order(tmp_path, shards):
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(5)]
    pattern = str(tmp_path / "shards" / "shard-{000000..000004}.tar")
    ds = TarShardDataset(pattern, transform=to_tensor)
    out = list(ds)
    assert captions(out) == [f"caption {i}" for i in range(23)]
    assert out[3][0].shape == (3, 8, 8) and out[3][0][0].mean() == pytest.approx(30 / 255, abs=0.02)
    assert ds.count_samples() == 23
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames()[:2] == ["000000000.jpg", "000000000.txt"]


@pytest.mark.parametrize("num_shards_size", [5, 30])  # 5 shards (>= some consumers) or 1 shard
@pytest.mark.parametrize("num_consumers", [1, 2, 4, 8])
def test_consumers_partition_samples_exactly(tmp_path, num_shards_size, num_consumers):
    paths = write_shards(make_samples(23), tmp_path, shard_size=num_shards_size)
    ds = TarShardDataset(paths)
    parts = [captions(ds.iter_consumer(c, num_consumers)) for c in range(num_consumers)]
    flat = [c for part in parts for c in part]
    assert sorted(flat) == sorted(f"caption {i}" for i in range(23))  # every sample exactly once
    assert all(parts), "no consumer may be left without samples"


@pytest.mark.parametrize("shard_size", [5, 100])  # 5 shards, or 1 shard < 2 ranks x 2 workers
def test_dataloader_workers_and_ranks(tmp_path, shard_size):
    paths = write_shards(make_samples(23), tmp_path, shard_size=shard_size)
    seen = []
    for rank in range(2):
        ds = TarShardDataset(paths, transform=to_tensor, rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_none)
        seen.extend(t for batch in loader for t in batch.texts)
    assert sorted(seen) == sorted(f"caption {i}" for i in range(23))


def test_shuffle_is_deterministic_by_seed_and_epoch(shards):
    def order(seed, epoch):
        ds = TarShardDataset(shards, shuffle_shards=True, shuffle_buffer=6, seed=seed)
        ds.set_epoch(epoch)
        return captions(ds)

    base = order(0, 0)
    assert base == order(0, 0)
    assert sorted(base) == sorted(f"caption {i}" for i in range(23))
    assert base != [f"caption {i}" for i in range(23)]
    assert base != order(0, 1) and base != order(1, 0)
    ds = TarShardDataset(shards, shuffle_shards=True, seed=0)
    first = ds.shard_order()
    ds.set_epoch(1)
    assert sorted(first) == sorted(ds.shard_order()) and first != ds.shard_order()


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = Image.new("RGB", (8, 8), (1, 2, 3))
    samples = [
        {"image": good, "txt": "fine", "json": {"width": 8}},
        {"jpg": b"not a jpeg" * 20, "txt": "garbage image"},
        {"image": good},  # no caption
        {"image": good, "txt": "  \n"},
        {"txt": "caption without image"},
        {"image": good, "txt": "also fine"},
    ]
    paths = write_shards(samples, tmp_path, shard_size=10)
    ds = TarShardDataset(paths, tokenizer=lambda texts: torch.tensor([[len(t)] for t in texts]))
    out = list(ds)
    assert [s is None for s in out] == [False, True, True, True, True, False]
    assert out[0][1].tolist() == [4]
    assert ds.skipped == {"corrupt_image": 1, "missing_caption": 1, "empty_caption": 1, "missing_image": 1}
    with tarfile.open(paths[0]) as tar:
        assert json.load(tar.extractfile("000000000.json")) == {"width": 8}


def test_truncated_shard_keeps_readable_samples(tmp_path):
    paths = write_shards(make_samples(12), tmp_path, shard_size=6)
    with tarfile.open(paths[1]) as tar:
        member = tar.getmembers()[6]  # the 4th sample's image
        cut = member.offset_data + member.size // 2
    paths[1].write_bytes(paths[1].read_bytes()[:cut])  # truncated inside a file
    ds = TarShardDataset(paths)
    got = captions(ds)
    assert got == [f"caption {i}" for i in range(9)]
    assert ds.skipped["corrupt_shard"] == 1


def test_class_labels(tmp_path):
    samples = [{"image": Image.new("RGB", (4, 4)), "cls": i % 3} for i in range(5)]
    samples.append({"image": Image.new("RGB", (4, 4)), "cls": "dog"})
    paths = write_shards(samples, tmp_path, image_format="png")
    ds = TarShardDataset(paths, target="cls")
    out = list(ds)
    assert [s[1] for s in out[:5]] == [0, 1, 2, 0, 1] and out[5] is None
    assert ds.skipped == {"bad_label": 1}


def test_construction_errors(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=r"2 of 7 shard files not found"):
        TarShardDataset(str(tmp_path / "shards" / "shard-{000000..000006}.tar"))
    with pytest.raises(ValueError, match="target"):
        TarShardDataset(shards, target="json")
    with pytest.raises(ValueError, match="rank"):
        TarShardDataset(shards, rank=0)
    with pytest.raises(ValueError, match="shard_size"):
        write_shards(make_samples(2), tmp_path, shard_size=0)
    with pytest.raises(ValueError, match="image_format"):
        write_shards(make_samples(2), tmp_path, image_format="gif")
