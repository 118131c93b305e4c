"""Samples/s reading WebDataset shards from a local S3 server and a local HTTP server vs the same shards on disk.

Two read paths over the same shards from three places, taking turns within every repeat (see
``_common.interleaved_times``):

* ``train``: clip_tiny's training read path (``TarShardDataset`` in a DataLoader: stream, decode, resize to
  clip_tiny's 32 px input, collate);
* ``embed``: ``openeva embed`` with clip_tiny's model (EVA02-test, random weights), one fresh run per timing.
  From disk: index the shards, read each image by its byte range, decode, preprocess, encode, write vector
  shards. From a store: one streaming pass, each shard downloaded once to a local temporary file (the next
  ones while one is embedded), indexed and embedded from there; the DataLoader workers read only local files,
  so they open no store session.

Both servers run on 127.0.0.1 in their own process, as a store is its own service (moto's S3 in server mode,
Python's ``http.server`` answering Range requests), so the numbers measure openeva's remote read path plus those
servers (on the same cores), not a network. Goal: remote at least 90% of disk.

    nice -n 10 .venv/bin/python benchmarks/bench_remote_data.py --shards 8 --per-shard 64 --workers 1
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import multiprocessing
import os
import socket
import tempfile
import time
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


class _Ranged(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers Range requests (as nginx or Apache do; Python's own does not)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        ranged = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not ranged or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start, _, end = ranged.removeprefix("bytes=").partition("-")
        first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last + 1 - first))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[first:last + 1])
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(root: str, http_port: int, s3_port: int) -> None:
    """The servers' own process (as a store is its own service): the HTTP file server and moto's S3."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False).start()
    handler = functools.partial(_Ranged, directory=root)
    http.server.ThreadingHTTPServer(("127.0.0.1", http_port), handler).serve_forever()


def start_servers(root: Path, paths: list[Path]) -> tuple[str, multiprocessing.Process]:
    """Both servers in one child process on 127.0.0.1; the shards uploaded to the bucket ``bench``. S3 is reached
    through the AWS environment variables (test credentials only). Returns the HTTP base URL and the process."""
    import boto3

    http_port, s3_port = _free_port(), _free_port()
    proc = multiprocessing.get_context("spawn").Process(target=_serve, args=(str(root), http_port, s3_port),
                                                        daemon=True)
    proc.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}")
    client = boto3.client("s3")
    for attempt in range(100):  # until the server answers
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:  # noqa: BLE001 - not up yet
            if attempt == 99:
                raise
            time.sleep(0.2)
    for p in paths:
        client.upload_file(str(p), "bench", p.name)
    return f"http://127.0.0.1:{http_port}", proc


def read_all(source: str, workers: int, batch_size: int, size: int) -> int:
    """Samples read, decoded and resized through the training path, by a fresh (one-epoch) DataLoader."""
    from torchvision.transforms import functional as F

    from openeva.data.loader import collate_skip_none
    from openeva.data.webdataset import TarShardDataset

    def to_tensor(image):
        return F.pil_to_tensor(F.resize(image, [size, size], antialias=True))  # (3, size, size) uint8

    ds = TarShardDataset(source, transform=to_tensor)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_none)
    return sum(b.size for b in loader if b is not None)


def _to_tensor(size: int, image):
    from torchvision.transforms import functional as F

    return F.pil_to_tensor(F.resize(image, [size, size], antialias=True))  # (3, size, size) uint8


class TrainingEpochs:
    """clip_tiny's training read path as a run sees it: the dataset train.data builds for tar shards (shard
    shuffle, a 1000-sample shuffle buffer) in the run's one ResumableLoader, whose workers persist; each call
    reads the next epoch (the first call, the warm-up, starts the workers and their store connections)."""

    def __init__(self, source: str, workers: int, batch_size: int, size: int, total: int):
        from openeva.data.webdataset import TarShardDataset
        from openeva.train.data import ResumableLoader

        ds = TarShardDataset(source, transform=functools.partial(_to_tensor, size), shuffle_shards=True,
                             shuffle_buffer=1000, seed=0)
        self.loader = ResumableLoader(ds, batch_size, num_workers=workers, samples_per_epoch=total)
        self.epoch = 0

    def __call__(self) -> int:
        self.epoch += 1
        return sum(b.size for b in self.loader.batches(self.epoch) if b is not None)


def embed_all(source: str, workers: int, batch_size: int, out_root: Path) -> int:
    """Images embedded by ``openeva embed`` (clip_tiny's model) into a fresh output folder."""
    from openeva.serve.embed import embed

    out = Path(tempfile.mkdtemp(dir=out_root))
    manifest = embed(source, model="EVA02-test", out=out, dtype="float32", batch_size=batch_size,
                     shard_size=1 << 20, workers=workers, progress=False)
    return int(manifest["count"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=256, help="stored JPEG side")
    ap.add_argument("--input-size", type=int, default=32, help="model input side after resizing (clip_tiny: 32)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (this machine has 2 cores)")
    ap.add_argument("--paths", default="train,embed", help="read paths to time: train, embed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(_common.RESULTS_DIR / "remote_data.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shards(Path(tmp) / "shards", args.shards, args.per_shard, args.image_size)
        pattern = f"shard-{{000000..{args.shards - 1:06d}}}.tar"
        http_url, servers = start_servers(Path(tmp) / "shards", paths)
        sources = {"disk": str(Path(tmp) / "shards" / pattern), "http": f"{http_url}/{pattern}",
                   "s3": f"s3://bench/{pattern}"}
        total = args.shards * args.per_shard
        counts = {name: read_all(src, 0, args.batch_size, args.input_size) for name, src in sources.items()}
        if any(n != total for n in counts.values()):
            raise SystemExit(f"sources disagree on the number of samples: {counts} (expected {total})")
        fns = {}
        for path in args.paths.split(","):
            for name, src in sources.items():
                if path == "train":
                    fns[f"train/{name}"] = TrainingEpochs(src, args.workers, args.batch_size, args.input_size, total)
                elif path == "embed":
                    fns[f"embed/{name}"] = functools.partial(embed_all, src, args.workers, args.batch_size,
                                                             Path(tmp))
                else:
                    raise SystemExit(f"unknown read path {path!r}: train or embed")
        if "embed" in args.paths:
            embedded = {name: embed_all(src, 0, args.batch_size, Path(tmp)) for name, src in sources.items()}
            if any(n != total for n in embedded.values()):
                raise SystemExit(f"embed disagrees on the number of images: {embedded} (expected {total})")
        times = _common.interleaved_times(fns, repeats=args.repeats)
        servers.terminate()
    rates = {name: total / _common.median(t) for name, t in times.items()}
    fraction = {k: round(v / rates[k.split("/")[0] + "/disk"], 3) for k, v in rates.items()}
    report = {
        "benchmark": "remote_data", "samples": total, "shards": args.shards, "workers": args.workers,
        "batch_size": args.batch_size, "image_size": args.image_size, "input_size": args.input_size,
        "paths": {"train": "clip_tiny's training read path: TarShardDataset (shard shuffle, 1000-sample shuffle "
                           "buffer), decode, resize, collate, in the run's persistent ResumableLoader, one epoch "
                           "per timing",
                  "embed": "openeva embed with EVA02-test (clip_tiny's model), random weights, float32 vectors, a "
                           "fresh run per timing; remote shards streamed (each downloaded once to a local "
                           "temporary file, indexed and embedded from it), disk shards indexed then read by range"},
        "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "fraction_of_disk": fraction, "goal_fraction": 0.9,
        "seconds": times, "environment": _common.environment(),
        "note": ("servers on 127.0.0.1 in their own process (moto S3 in server mode, a Range-answering "
                 "http.server), no network; measured on a shared, loaded 2-core machine (other jobs running, "
                 "niced): the numbers are noisy, compare fractions within one run only"),
    }
    path = _common.write_json(args.out, report)
    print(f"{'path/source':14s} {'samples/s':>10s} {'of disk':>8s}")
    for name, rate in rates.items():
        print(f"{name:14s} {rate:10.1f} {fraction[name]:8.1%}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
