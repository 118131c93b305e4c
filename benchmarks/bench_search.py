"""Search latency and recall@10 of the index, exact (flat) vs approximate (IVF, HNSW), on random unit vectors.

Random unit vectors are the hardest case for approximate search (no cluster structure), so the recall here is
a floor. Latency: one query at a time (a service's case) and a batch of queries; recall@10 against exact
search on held-out random queries. Sizes and dimension are bounded by this shared machine's memory and time.

    .venv/bin/python benchmarks/bench_search.py --sizes 100000,1000000 --dim 256 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common
import numpy as np
import torch


def unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):  # chunks keep the float64 temporaries small
        block = rng.standard_normal((min(100_000, n - start), d))
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--kinds", default="flat,ivf,hnsw")
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="HNSW builds above this size are skipped (time)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(_common.RESULTS_DIR / "search.json"))
    args = ap.parse_args()
    import faiss

    from openeva.serve.index import Index

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        vectors = unit(n, args.dim, seed=0)
        queries = unit(args.queries, args.dim, seed=1)
        _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)  # (Q, 10)
        meta = [{"id": str(i)} for i in range(n)]
        for kind in args.kinds.split(","):
            if kind == "hnsw" and n > args.hnsw_max:
                rows.append({"n": n, "kind": kind, "skipped": f"HNSW build above {args.hnsw_max} vectors takes too "
                             "long on 2 shared cores"})
                continue
            start = time.perf_counter()
            index = Index.build(vectors, meta, kind=kind)
            build_s = time.perf_counter() - start
            single = []
            for q in queries[:50]:
                t = time.perf_counter()
                index.faiss_index.search(q[None], 10)
                single.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, got = index.faiss_index.search(queries, 10)
            batch_s = time.perf_counter() - t
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), got.tolist())]))
            rows.append({"n": n, "dim": args.dim, "kind": kind, "params": index.manifest["params"],
                         "build_s": round(build_s, 2), "latency_ms_p50": round(1000 * float(np.median(single)), 3),
                         "latency_ms_p99": round(1000 * float(np.percentile(single, 99)), 3),
                         "batch_queries_per_s": round(len(queries) / batch_s, 1), "recall@10": round(recall, 4),
                         "recall@10_at_build": index.manifest["recall@10"]})
            print(json.dumps(rows[-1]), flush=True)
            write(args.out, rows, args.queries)  # after every row: a run cut short keeps what it measured
            del index
        del vectors
    write(args.out, rows, args.queries)


def write(out: str, rows: list[dict], queries: int) -> None:
    import faiss

    result = {"benchmark": "search", "rows": rows, "queries": queries,
              "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "faiss": faiss.__version__,
              "note": "random unit vectors (worst case for approximate search); shared machine, other jobs running",
              "environment": _common.environment()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
