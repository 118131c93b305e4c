"""Samples/s reading WebDataset shards from a local S3 server and a local HTTP server vs the same shards on disk.

The training read path (``TarShardDataset`` in a DataLoader: stream, decode, resize to the model's input,
collate) over the same shards from three places, taking turns within every repeat (see
``_common.interleaved_times``). Both servers run on 127.0.0.1 (moto's S3 in server mode, Python's
``http.server``), so the numbers measure openeva's remote read path plus those servers, not a network.
Goal: remote at least 90% of disk.

    .venv/bin/python benchmarks/bench_remote_data.py --shards 8 --per-shard 64 --workers 2
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import os
import socket
import tempfile
import threading
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image


def make_shards(folder: Path, shards: int, per_shard: int, size: int) -> list[Path]:
    from openeva.data.webdataset import write_shards

    rng = np.random.default_rng(0)

    def samples():
        for i in range(shards * per_shard):
            pixels = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
            yield Image.fromarray(pixels).resize((size, size), Image.BILINEAR), f"sample {i}"  # photo-like JPEGs

    return write_shards(samples(), folder, shard_size=per_shard)


def start_http(root: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def start_s3(paths: list[Path]):
    """moto's S3 on 127.0.0.1, reached through the AWS environment variables (test credentials only)."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    for p in paths:
        client.upload_file(str(p), "bench", p.name)
    return server


def read_all(source: str, workers: int, batch_size: int, size: int) -> int:
    """Samples read, decoded and resized through the training path."""
    from torchvision.transforms import functional as F

    from openeva.data.loader import collate_skip_none
    from openeva.data.webdataset import TarShardDataset

    def to_tensor(image):
        return F.pil_to_tensor(F.resize(image, [size, size], antialias=True))  # (3, size, size) uint8

    ds = TarShardDataset(source, transform=to_tensor)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_none)
    return sum(b.size for b in loader if b is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=256, help="stored JPEG side")
    ap.add_argument("--input-size", type=int, default=224, help="model input side after resizing")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(_common.RESULTS_DIR / "remote_data.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shards(Path(tmp) / "shards", args.shards, args.per_shard, args.image_size)
        pattern = f"shard-{{000000..{args.shards - 1:06d}}}.tar"
        http_url, http_server = start_http(Path(tmp) / "shards")
        s3_server = start_s3(paths)
        sources = {"disk": str(Path(tmp) / "shards" / pattern), "http": f"{http_url}/{pattern}",
                   "s3": f"s3://bench/{pattern}"}
        total = args.shards * args.per_shard
        counts = {name: read_all(src, 0, args.batch_size, args.input_size) for name, src in sources.items()}
        if any(n != total for n in counts.values()):
            raise SystemExit(f"sources disagree on the number of samples: {counts} (expected {total})")
        times = _common.interleaved_times(
            {name: functools.partial(read_all, src, args.workers, args.batch_size, args.input_size)
             for name, src in sources.items()}, repeats=args.repeats)
        http_server.shutdown()
        s3_server.stop()
    rates = {name: total / _common.median(t) for name, t in times.items()}
    report = {
        "benchmark": "remote_data", "samples": total, "shards": args.shards, "workers": args.workers,
        "batch_size": args.batch_size, "image_size": args.image_size, "input_size": args.input_size,
        "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "fraction_of_disk": {k: round(v / rates["disk"], 3) for k, v in rates.items()},
        "seconds": times, "environment": _common.environment(),
    }
    path = _common.write_json(args.out, report)
    print(f"{'source':8s} {'samples/s':>10s} {'of disk':>8s}")
    for name, rate in rates.items():
        print(f"{name:8s} {rate:10.1f} {rate / rates['disk']:8.1%}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
