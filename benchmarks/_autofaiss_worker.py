"""autofaiss, the anchor of the index benchmark, run in its own virtual environment (it pins numpy<2).

Run by ``bench_index_scale.py`` as a subprocess of ``.bench-venvs/autofaiss/bin/python``; it imports nothing of
openeva (which needs numpy 2) and speaks JSON: the last stdout line is the result.

    python _autofaiss_worker.py build EMB_NPY_DIR INDEX_DIR --max-memory 4G --query-ms 10 --cores 2
    python _autofaiss_worker.py search INDEX_DIR QUERIES.npy IDS_OUT.npy --k 10 --singles 200 --batch 32

``build`` reads the folder of ``.npy`` files as autofaiss does (float16 shards are read batch by batch into
float32) and reports its time and the process's peak resident memory (ru_maxrss). ``search`` opens the index as a
memory map where autofaiss made it memory-mappable, applies the search parameters autofaiss tuned, and reports
p50/p99 latency for single queries and batches, writing the top-k row ids for the parent to score.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def build(args) -> dict:
    import faiss
    from autofaiss import build_index

    faiss.omp_set_num_threads(args.cores)
    os.makedirs(args.index_dir, exist_ok=True)
    start = time.perf_counter()
    _, infos = build_index(embeddings=args.emb, index_path=os.path.join(args.index_dir, "knn.index"),
                           index_infos_path=os.path.join(args.index_dir, "infos.json"), metric_type="ip",
                           max_index_memory_usage=args.max_memory, current_memory_available=args.available,
                           max_index_query_time_ms=args.query_ms, min_nearest_neighbors_to_retrieve=args.k,
                           nb_cores=args.cores, should_be_memory_mappable=True, verbose=logging.WARNING)
    build_s = time.perf_counter() - start
    infos = infos or {}
    return {"build_s": round(build_s, 2), "peak_rss_bytes": _peak_rss(), "disk_bytes": _dir_bytes(args.index_dir),
            "index_key": infos.get("index_key"), "index_param": infos.get("index_param"),
            "autofaiss_infos": {k: v for k, v in infos.items() if isinstance(v, (str, int, float))},
            "faiss": faiss.__version__}


def search(args) -> dict:
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(args.cores)
    path = os.path.join(args.index_dir, "knn.index")
    with open(os.path.join(args.index_dir, "infos.json")) as f:
        infos = json.load(f)
    try:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        mmap = True
    except RuntimeError:  # not every kind can be memory-mapped
        index = faiss.read_index(path)
        mmap = False
    if infos.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    queries = np.load(args.queries).astype("float32")  # (Q, D)
    index.search(queries[:8], args.k)  # warm the memory map
    singles = []
    for q in queries[:args.singles]:
        t = time.perf_counter()
        index.search(q[None], args.k)
        singles.append(time.perf_counter() - t)
    batches = []
    for start in range(0, len(queries) - args.batch + 1, args.batch):
        t = time.perf_counter()
        index.search(queries[start:start + args.batch], args.k)
        batches.append(time.perf_counter() - t)
    _, ids = index.search(queries, args.k)  # (Q, k)
    np.save(args.ids_out, ids.astype("int64"))
    ms = lambda xs, p: round(1000 * float(np.percentile(xs, p)), 3)
    return {"p50_ms": ms(singles, 50), "p99_ms": ms(singles, 99), "batch": args.batch,
            "batch_p50_ms": ms(batches, 50), "batch_p99_ms": ms(batches, 99), "memory_mapped": mmap,
            "search_peak_rss_bytes": _peak_rss(), "index_param": infos.get("index_param")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("build")
    b.add_argument("emb")
    b.add_argument("index_dir")
    b.add_argument("--max-memory", default="4G")
    b.add_argument("--available", default="8G")
    b.add_argument("--query-ms", type=float, default=10.0)
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--cores", type=int, default=2)
    s = sub.add_parser("search")
    s.add_argument("index_dir")
    s.add_argument("queries")
    s.add_argument("ids_out")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--singles", type=int, default=200)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    result = build(args) if args.mode == "build" else search(args)
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
