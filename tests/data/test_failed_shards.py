"""A shard that fails for good in a DataLoader worker process is counted and named in the main process
(:func:`take_failed_shards`) and in a training run's metrics.jsonl."""

import json

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from openeva.configs import CONFIG_DIR
from openeva.data.loader import collate_skip_none, take_failed_shards
from openeva.data.sources import RetryPolicy
from openeva.data.webdataset import TarShardDataset, write_shards

FAST = RetryPolicy(retries=1, backoff=0.01)


def make_shards(tmp_path, n=32, shard_size=8):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    samples = [(Image.new("RGB", (40, 40), colours[i % 4]), f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square")
               for i in range(n)]
    return write_shards(samples, tmp_path / "shards", shard_size=shard_size)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_failed_shard_reaches_the_main_process_in_batches(tmp_path, serve_http, num_workers):
    make_shards(tmp_path)  # 4 shards of 8
    with serve_http(tmp_path / "shards", truncate={"shard-000002.tar"}) as (url, _):
        ds = TarShardDataset(f"{url}/shard-{{000000..000003}}.tar", retry=FAST)
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=collate_skip_none)
        names, rows = [], 0
        for batch in loader:
            names += take_failed_shards(ds)
            rows += batch.size
        # shard 2 is worker 0's last: it fails after that worker's last full batch, so the name arrives after
        # the loop (not in a batch)
        names += take_failed_shards(ds)
    assert names == [f"{url}/shard-000002.tar"]  # once, whichever process read it
    assert take_failed_shards(ds) == []
    assert 24 <= rows < 32  # the samples before the cut are kept, the rest of the shard is skipped
    if num_workers:
        assert ds.failed_shards == []  # the main process's copy read nothing: only the queue could tell


@pytest.mark.slow  # a clip_tiny run with 2 worker processes: about 30 s on 2 CPU cores
def test_training_with_workers_logs_failed_shards_in_metrics(tmp_path, serve_http):
    from openeva.train.config import load_config
    from openeva.train.runner import train

    make_shards(tmp_path)
    with serve_http(tmp_path / "shards", truncate={"shard-000000.tar"}) as (url, _):  # worker 0's first shard
        cfg = load_config(CONFIG_DIR / "clip_tiny.py", [
            f"output_dir={tmp_path}", "name=run", "progress=false", "tensorboard=false", "plot=false", "data.val=none",
            "data.zeroshot=none", "log_every=1", "schedule.total_steps=4", "schedule.warmup_steps=1",
            "data.batch_size=4", "data.train_num_samples=32", "save_every=100", "data.num_workers=2",
            f"data.train={url}/shard-{{000000..000003}}.tar"])
        train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 4 and train_rows[-1]["failed_shards"] == 1  # the run went on to its last step
    named = [n for r in train_rows for n in r.get("failed_shard_names", [])]
    assert named == [f"{url}/shard-000000.tar"]
