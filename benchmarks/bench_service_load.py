"""A bounded load test of `openeva serve` on 127.0.0.1: micro-batching on vs off.

For each mode a fresh `openeva serve` process (real uvicorn) gets a fixed number of requests from N concurrent
clients (one text, or one 224 px JPEG, per request): p50/p99 latency, throughput, errors, and the server's peak
resident memory (VmHWM of its process).

    .venv/bin/python benchmarks/bench_service_load.py --model EVA02-B-16 --requests 96 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def load(url: str, kind: str, requests: int, clients: int) -> dict:
    import httpx

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    latencies, errors = [], 0
    queue = list(range(requests))

    async def client(c: httpx.AsyncClient):
        nonlocal errors
        while queue:
            i = queue.pop()
            start = time.perf_counter()
            if kind == "text":
                r = await c.post("/v1/embed/texts", json={"texts": [f"a photo of thing number {i}"]})
            else:
                r = await c.post("/v1/embed/images", files={"files": (f"{i}.jpg", jpeg.getvalue(), "image/jpeg")})
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"requests": requests, "clients": clients, "errors": errors, "wall_s": round(wall, 2),
            "throughput_rps": round(requests / wall, 2),
            "latency_ms_p50": round(1000 * float(np.percentile(latencies, 50)), 1),
            "latency_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 1)}


def run_mode(model: str, batching: bool, kinds: list[str], requests: int, clients: int, threads: int) -> dict:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "openeva", "serve", "--model", model, "--port", str(port), "--max-concurrent", "256"]
    if not batching:
        cmd.append("--no-batching")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        out = {"batching": batching}
        for kind in kinds:
            asyncio.run(load(url, kind, 4, 2))  # warm-up
            out[kind] = asyncio.run(load(url, kind, requests, clients))
            print(json.dumps({"batching": batching, kind: out[kind]}), flush=True)
        metrics = httpx.get(f"{url}/metrics").text
        out["batch_size_mean"] = {}
        for kind in kinds:
            total = [float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(f'openeva_batch_size_sum{{kind="{kind}"')]
            count = [float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(f'openeva_batch_size_count{{kind="{kind}"')]
            out["batch_size_mean"][kind] = round(total[0] / count[0], 2) if count and count[0] else None
        out["server_peak_rss_mb"] = round(peak_rss(proc.pid) / 2**20, 1)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="EVA02-B-16")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kinds", default="text,image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(_common.RESULTS_DIR / "service_load.json"))
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    modes = [run_mode(args.model, b, kinds, args.requests, args.clients, args.threads) for b in (True, False)]
    result = {"benchmark": "service_load", "model": args.model, "weights": "random", "precision": "fp32",
              "modes": modes, "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "note": "client and server on the same shared 2-core machine, other jobs running; bounded counts",
              "environment": _common.environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
