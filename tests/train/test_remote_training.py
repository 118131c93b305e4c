"""clip_tiny trains from s3:// and http:// shards (local servers) exactly as from the same shards on disk."""

import json
from pathlib import Path

import pytest
from PIL import Image
from remote_servers import http_server, s3_server

from openeva.configs import CONFIG_DIR
from openeva.data.webdataset import write_shards
from openeva.train.config import load_config
from openeva.train.runner import train

QUIET = ["progress=false", "tensorboard=false", "plot=false", "data.val=none", "data.zeroshot=none", "log_every=1",
         "schedule.total_steps=3", "schedule.warmup_steps=1", "data.batch_size=8", "data.train_num_samples=32",
         "save_every=100"]


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.mark.slow  # three short training runs: about a minute on 2 CPU cores
def test_clip_tiny_from_s3_and_http_equals_disk(tmp_path, monkeypatch):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    samples = [(Image.new("RGB", (40, 40), colours[i % 4]), f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square")
               for i in range(32)]
    paths = write_shards(samples, tmp_path / "shards", shard_size=8)  # 4 shards

    def run(name, source, *extra):
        cfg = load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", f"name={name}", *QUIET,
                                                        f"data.train={source}", *extra])
        train(cfg)
        return _losses(tmp_path / name)

    disk = run("disk", str(tmp_path / "shards" / "shard-{000000..000003}.tar"), "data.num_workers=0")
    with http_server(tmp_path / "shards") as (url, _):
        assert run("http", f"{url}/shard-{{000000..000003}}.tar", "data.num_workers=0") == disk
    with s3_server(monkeypatch) as s3:
        for p in paths:
            s3.upload_file(str(p), "shards", f"cc/{p.name}")
        # a worker process reads the stream (a forked process, its own connections)
        assert run("s3", "s3://shards/cc/shard-{000000..000003}.tar", "data.num_workers=1") == disk
