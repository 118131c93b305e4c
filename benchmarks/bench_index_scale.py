"""The index at the scale of a real collection: 1M (and 10M) vectors of dimension 512, against autofaiss.

Two distributions (``_index_vectors.py``): clustered vectors calibrated to real embeddings (their top-10 neighbour
cosine similarities match those of Fashion-MNIST embedded by a CLIP trained here, within a stated tolerance: both
distributions are printed and stored) and random unit vectors, the worst case. Both are written as ``openeva
embed`` folders of float16 shards, and both indexes build from them by streaming.

For each: build time and peak resident memory of the build process (a subprocess; its ``ru_maxrss`` read by the
parent through ``wait4``), disk size, recall@10 against exact search on held-out queries (new points, never stored
vectors), p50/p99 latency of single queries and of batches of 32, the time to add 1,000 rows, and optionally reads
answered by 2 reader processes while a write is in progress; autofaiss (its own venv, ``.bench-venvs/autofaiss``)
builds and searches the same vectors in the same run as the anchor. Goals are reported, not asserted.

    .venv/bin/python benchmarks/bench_index_scale.py calibrate            # once: trains a small CLIP (minutes)
    nice -n 10 .venv/bin/python benchmarks/bench_index_scale.py run --sizes 1000000
    nice -n 10 .venv/bin/python benchmarks/bench_index_scale.py run --sizes 10000000 --out \
        benchmarks/results/index_scale_10m.json      # ~10 GB of shards under --work; hours on 2 cores
    python3.11 -m venv .bench-venvs/autofaiss && .bench-venvs/autofaiss/bin/pip install autofaiss==2.18.0 \
        "pyarrow<15" "numpy<2" faiss-cpu==1.8.0.post1   # autofaiss's OPQ call fails on faiss 1.15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import _common
import _index_vectors as iv

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = _common.RESULTS_DIR / "index_scale_reference.json"
AUTOFAISS_PY = ROOT / ".bench-venvs" / "autofaiss" / "bin" / "python"
K = 10
GOALS = {"build_peak_rss_gb_10m": 4.0, "recall@10": 0.95, "p50_ms": 20.0, "add_1000_s": 1.0}


# ------------------------------------------------------------------------------------------- subprocesses
def run_measured(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd``; -> its last stdout line as JSON, plus ``peak_rss_bytes`` (ru_maxrss from wait4) and wall time."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_index_{os.getpid()}_{time.monotonic_ns()}.out"
    start = time.perf_counter()
    with open(out_path, "w+") as out, open(str(out_path) + ".err", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    out_path.unlink(missing_ok=True)
    Path(str(out_path) + ".err").unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
        return {"status": "failed" if wall < timeout else "timeout", "returncode": proc.returncode,
                "reason": " | ".join(tail)[-600:], "wall_s": round(wall, 1)}
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"status": "ok", **result, "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": round(wall, 1)}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def latency_summary(singles: list[float], batches: list[float], batch: int) -> dict:
    ms = lambda xs, p: round(1000 * float(np.percentile(xs, p)), 3)
    return {"p50_ms": ms(singles, 50), "p99_ms": ms(singles, 99), "batch": batch, "batch_p50_ms": ms(batches, 50),
            "batch_p99_ms": ms(batches, 99)}


# ------------------------------------------------------------------------------- workers (subprocess side)
def worker_build(args) -> dict:
    from openeva.index import Index

    start = time.perf_counter()
    index = Index.build([args.emb], args.index, kind=args.kind, max_memory=args.max_memory,
                        target_recall=args.target_recall, seed=0)
    build_s = time.perf_counter() - start
    m = index.manifest
    return {"build_s": round(build_s, 2), "kind": index.kind, "rows": len(index),
            "manifest": {k: m.get(k) for k in ("kind", "factory", "params", "recall@10", "recall", "max_memory",
                                              "count", "segments") if k in m}}


def worker_search(args) -> dict:
    import resource

    from openeva.index import Index

    index = Index.open(args.index)
    queries = np.load(args.queries).astype(np.float32)  # (Q, D)
    index.search(queries[:8], k=K)  # warm the memory maps
    singles, batches = [], []
    for q in queries[:args.singles]:
        t = time.perf_counter()
        index.search(q[None], k=K)
        singles.append(time.perf_counter() - t)
    for start in range(0, len(queries) - args.batch + 1, args.batch):
        t = time.perf_counter()
        index.search(queries[start:start + args.batch], k=K)
        batches.append(time.perf_counter() - t)
    ids = np.full((len(queries), K), -1, np.int64)
    for start in range(0, len(queries), 256):
        for i, hits in enumerate(index.search(queries[start:start + 256], k=K)):
            got = [int(h["id"]) for h in hits[:K]]
            ids[start + i, :len(got)] = got
    np.save(args.ids_out, ids)
    return {**latency_summary(singles, batches, args.batch),
            "search_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _new_rows(n: int, dim: int, first_id: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    vecs = iv.Generator(kind="random", dim=dim).rows(0, n, seed)  # (n, D)
    meta = [{"id": str(first_id + i), "path": f"added/{first_id + i:09d}.jpg", "caption": None, "width": 0,
             "height": 0, "source": {"path": f"added/{first_id + i:09d}.jpg"}} for i in range(n)]
    return vecs, meta


def worker_add(args) -> dict:
    from openeva.index import Index

    index = Index.open(args.index)
    before = len(index)
    vecs, meta = _new_rows(args.rows, index.dim, 10 ** 12 + before, seed=before)
    t0, start = time.time(), time.perf_counter()
    added = index.add(vecs, meta)
    add_s = time.perf_counter() - start
    t1 = time.time()
    index.refresh()
    found = index.search(vecs[:1], k=1)[0]
    return {"add_s": round(add_s, 4), "added": int(added), "rows_before": before, "rows_after": len(index),
            "added_row_found": bool(found and found[0]["id"] == meta[0]["id"]), "add_start": t0, "add_end": t1}


def worker_reader(args) -> dict:
    """One reader (one thread, as one uvicorn worker), searching until the file ``args.stop`` exists, refreshing
    before every query as the service does: (start, end, live rows seen) of every answer. Touches
    ``args.stop + ".ready.<pid>"`` after its first answer."""
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    from openeva.index import Index

    index = Index.open(args.index)
    queries = np.load(args.queries).astype(np.float32)
    done, refreshes, i = [], 0, 0
    stop = Path(args.stop)
    while not stop.exists():
        t = time.time()
        refreshes += bool(index.refresh())
        index.search(queries[i % len(queries)][None], k=K)
        done.append((t, time.time(), len(index)))
        if i == 0:
            Path(f"{stop}.ready.{os.getpid()}").touch()
        i += 1
    return {"answers": done, "refreshes": refreshes, "rows_at_end": len(index)}


# ----------------------------------------------------------------------------------- the parent's steps
def truth_and_neighbours(emb: Path, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-10 (sims, rows) of the queries over the whole set, streamed shard by shard."""
    return iv.exact_topk(queries, iv.iter_shards(emb), K)


def recall_at_k(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / K for a, b in zip(ids, truth)]))


def prepare(kind: str, n: int, work: Path, reference: dict | None, queries_n: int, log) -> dict:
    gen = iv.Generator(**reference["generator"]) if kind == "clustered" else iv.Generator(kind="random")
    folder = work / f"{kind}_{n}"
    emb = folder / "emb"
    t = time.perf_counter()
    iv.write_embedding_folder(emb, gen, n, seed=0, log=log)
    queries = iv.query_rows(gen, n, queries_n, seed=0)  # (Q, D) held out: not stored vectors
    cached = folder / "truth.npz"  # a rerun over the same vectors and queries skips the exact search
    if cached.is_file() and np.array_equal(np.load(cached)["queries"], queries):
        sims, truth = np.load(cached)["sims"], np.load(cached)["rows"]
    else:
        log(f"[{kind} {n:,}] exact search of {queries_n} held-out queries (truth) ...")
        sims, truth = truth_and_neighbours(emb, queries)
        np.savez(cached, queries=queries, sims=sims, rows=truth)
    np.save(folder / "queries.npy", queries)
    npy_dir = folder / "npy"  # autofaiss reads a folder of .npy files: links to the float16 shards
    npy_dir.mkdir(exist_ok=True)
    for f in sorted((emb / "shards").glob("[0-9][0-9][0-9][0-9][0-9].npy")):
        if not (npy_dir / f.name).exists():
            (npy_dir / f.name).symlink_to(f.resolve())
    neighbours = iv.describe(sims)
    return {"folder": folder, "emb": emb, "queries": folder / "queries.npy", "truth": truth, "generator": gen,
            "neighbours": neighbours, "prepare_s": round(time.perf_counter() - t, 1)}


def bench_openeva(p: dict, args, log) -> dict:
    index_dir = p["folder"] / "openeva_index"
    if index_dir.exists():
        import shutil

        shutil.rmtree(index_dir)
    me = [sys.executable, __file__]
    log(f"  openeva: building (max_memory={args.max_memory}) ...")
    build = run_measured([*me, "_build", str(p["emb"]), str(index_dir), "--max-memory", args.max_memory,
                          "--kind", args.kind], timeout=args.timeout)
    if build["status"] != "ok":
        return {"build": build}
    row = {"build": build, "disk_bytes_index": dir_bytes(index_dir), "disk_bytes_embeddings": dir_bytes(p["emb"])}
    log(f"  openeva: built in {build['build_s']} s, peak RSS {build['peak_rss_bytes'] / 2**30:.2f} GiB; searching ...")
    ids_path = p["folder"] / "openeva_ids.npy"
    search = run_measured([*me, "_search", str(index_dir), str(p["queries"]), str(ids_path), "--singles",
                           str(args.singles)], timeout=args.timeout)
    row["search"] = search
    if search["status"] == "ok":
        row["recall@10"] = round(recall_at_k(np.load(ids_path), p["truth"]), 4)
        log(f"  openeva: recall@10 {row['recall@10']}, p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms, "
            f"batch of 32 p50 {search['batch_p50_ms']} ms")
    if args.concurrency:
        row["reads_during_write"] = reads_during_write(index_dir, p["queries"], args)
    add = run_measured([*me, "_add", str(index_dir), "--rows", "1000"], timeout=args.timeout)
    row["add_1000"] = add
    if add["status"] == "ok":
        log(f"  openeva: add of 1,000 rows {add['add_s']} s (found after refresh: {add['added_row_found']})")
    return row


def reads_during_write(index_dir: Path, queries: Path, args) -> dict:
    """2 reader processes (1 thread each, as 2 uvicorn workers) search while a third process adds 1,000 rows:
    how many reads were answered while the add ran, and whether every read that began after the add returned
    saw the new rows (each reader refreshes before each query, as the service does)."""
    me = [sys.executable, __file__]
    stop = index_dir.parent / "readers.stop"
    for f in index_dir.parent.glob("readers.stop*"):
        f.unlink()
    readers = [subprocess.Popen([*me, "_reader", str(index_dir), str(queries), "--stop", str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + args.timeout
    while len(list(index_dir.parent.glob("readers.stop.ready.*"))) < 2 and time.time() < deadline:
        if any(r.poll() is not None for r in readers):
            break
        time.sleep(0.2)
    write = run_measured([*me, "_add", str(index_dir), "--rows", "1000"], timeout=args.timeout)
    time.sleep(args.concurrency_s)  # reads after the write: do they see it?
    stop.touch()
    results = []
    for r in readers:
        out, err = r.communicate(timeout=args.timeout)
        if r.returncode != 0:
            return {"status": "failed", "reason": err.strip().splitlines()[-1:], "write": write}
        results.append(json.loads(out.strip().splitlines()[-1]))
    if write.get("status") != "ok":
        return {"status": "failed", "write": write}
    w0, w1, rows_after = write["add_start"], write["add_end"], write["rows_after"]
    during = [(a, b) for res in results for a, b, _ in res["answers"] if b >= w0 and a <= w1]
    after = [n for res in results for a, _, n in res["answers"] if a >= w1]
    return {"status": "ok", "add_s": write["add_s"], "write": write,
            "reads_answered_during_write": len(during),
            "read_max_ms_during_write": round(1000 * max(b - a for a, b in during), 2) if during else None,
            "reads_after_write": len(after), "reads_after_write_seeing_it": sum(n == rows_after for n in after),
            "reads_before_write": sum(1 for res in results for _, b, _ in res["answers"] if b < w0)}


def bench_autofaiss(p: dict, args, log) -> dict:
    if not AUTOFAISS_PY.is_file():
        return {"status": "skipped", "reason": f"no {AUTOFAISS_PY}: see this script's docstring to create it"}
    index_dir = p["folder"] / "autofaiss_index"
    worker = str(Path(__file__).parent / "_autofaiss_worker.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log(f"  autofaiss: building (max_index_memory_usage={args.max_memory}) ...")
    build = run_measured([str(AUTOFAISS_PY), worker, "build", str(p["folder"] / "npy"), str(index_dir),
                          "--max-memory", args.max_memory, "--available", args.available,
                          "--query-ms", str(args.autofaiss_query_ms)], timeout=args.timeout, env=env)
    if build["status"] != "ok":
        return {"build": build}
    ids_path = p["folder"] / "autofaiss_ids.npy"
    search = run_measured([str(AUTOFAISS_PY), worker, "search", str(index_dir), str(p["queries"]), str(ids_path),
                           "--singles", str(args.singles)], timeout=args.timeout, env=env)
    row = {"build": build, "search": search, "disk_bytes_index": dir_bytes(index_dir)}
    if search["status"] == "ok":
        row["recall@10"] = round(recall_at_k(np.load(ids_path), p["truth"]), 4)
        log(f"  autofaiss ({build.get('index_key')}, {build.get('index_param')}): built in {build['build_s']} s, "
            f"recall@10 {row['recall@10']}, p50 {search['p50_ms']} ms")
    return row


def goals(row: dict) -> dict:
    """The issue's goals against what was measured (reported, never asserted)."""
    oe, af = row.get("openeva", {}), row.get("autofaiss", {})
    build, search = oe.get("build", {}), oe.get("search", {})
    out = {}
    if build.get("status") == "ok":
        gb = build["peak_rss_bytes"] / 1e9
        out["build_peak_rss_under_4gb"] = {"measured_gb": round(gb, 3), "met": gb < 4.0,
                                           "note": "the goal is for 10M" if row["n"] < 10_000_000 else ""}
    if "recall@10" in oe:
        out["recall@10_at_least_0.95"] = {"measured": oe["recall@10"], "met": oe["recall@10"] >= 0.95}
    if search.get("status") == "ok":
        out["p50_under_20ms"] = {"measured_ms": search["p50_ms"], "met": search["p50_ms"] < 20.0}
    if "recall@10" in oe and "recall@10" in af and af.get("search", {}).get("status") == "ok":
        out["autofaiss_recall_at_its_latency"] = {
            "openeva": [oe["recall@10"], search["p50_ms"]], "autofaiss": [af["recall@10"], af["search"]["p50_ms"]],
            "met": oe["recall@10"] >= af["recall@10"] and search["p50_ms"] <= af["search"]["p50_ms"]}
    add = oe.get("add_1000", {})
    if add.get("status") == "ok":
        out["add_1000_under_1s"] = {"measured_s": add["add_s"], "met": add["add_s"] < 1.0,
                                    "note": "the goal is for a 10M index" if row["n"] < 10_000_000 else ""}
    rdw = oe.get("reads_during_write", {})
    if rdw.get("status") == "ok":
        out["reads_answered_during_write"] = {
            "measured": rdw["reads_answered_during_write"], "reads_after_write": rdw["reads_after_write"],
            "reads_after_write_seeing_it": rdw["reads_after_write_seeing_it"],
            "met": rdw["reads_answered_during_write"] > 0 and rdw["reads_after_write"] > 0
            and rdw["reads_after_write_seeing_it"] == rdw["reads_after_write"]}
    return out


# ------------------------------------------------------------------------------------------------ report
def instruction_set() -> dict:
    """The SIMD level FAISS was built for and runs (its kernels decide search speed), and the CPU's vector flags."""
    import faiss

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_bf16")
    info = {"cpu": _common.cpu_name(), "cpu_vector_flags": [f for f in wanted if f in flags],
            "faiss": faiss.__version__, "faiss_compile_options": faiss.get_compile_options()}
    try:
        info["faiss_simd_level"] = faiss.SIMDConfig.get_level_name()
    except AttributeError:
        pass
    return info


def write_reports(out: Path, report: dict) -> None:
    _common.write_json(out, report)
    out.with_suffix(".md").write_text(markdown(report))


def _gib(b) -> str:
    return f"{b / 2**30:.2f}" if isinstance(b, (int, float)) else "-"


def markdown(report: dict) -> str:
    env = report["machine"]
    lines = [f"# Index at scale (dimension {report['dim']})", "",
             (f"{env['cpu']} ({', '.join(env['cpu_vector_flags'])}), {report['environment']['cpu_count']} cores; "
              f"{report['load_note']}"), "",
             ("| vectors | N | index | build s | build peak RSS GiB | disk GiB | recall@10 | p50 ms | p99 ms | "
              "batch 32 p50 ms | add 1,000 s |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for name in ("openeva", "autofaiss"):
            if name not in row:
                continue
            r = row[name]
            b, s = r.get("build", {}), r.get("search", {})
            if b.get("status") != "ok":
                lines.append(f"| {row['kind']} | {row['n']:,} | {name} | {b.get('status', r.get('status', '-'))}: "
                             f"{b.get('reason', r.get('reason', ''))[:80]} | | | | | | | |")
                continue
            label = name + (f" {b.get('index_key')}" if name == "autofaiss" else f" {b.get('kind', '')}")
            add = r.get("add_1000", {}).get("add_s", "-")
            lines.append(f"| {row['kind']} | {row['n']:,} | {label} | {b['build_s']} | {_gib(b['peak_rss_bytes'])} | "
                         f"{_gib(r.get('disk_bytes_index'))} | {r.get('recall@10', '-')} | {s.get('p50_ms', '-')} | "
                         f"{s.get('p99_ms', '-')} | {s.get('batch_p50_ms', '-')} | {add} |")
    cal = report.get("calibration")
    if cal:
        lines += ["", (f"Clustered vectors vs the reference (pooled top-10 neighbour cosine, tolerance "
                       f"{cal['tolerance']} per quantile):"), "",
                  "| quantile | " + " | ".join(cal["reference"]["quantiles"]) + " |",
                  "|---|" + "---|" * len(cal["reference"]["quantiles"])]
        lines.append("| Fashion-MNIST CLIP | " + " | ".join(str(v) for v in cal["reference"]["quantiles"].values())
                     + " |")
        for row in report["rows"]:
            q = row["neighbours"]["quantiles"]
            lines.append(f"| {row['kind']} {row['n']:,} | " + " | ".join(str(v) for v in q.values()) + " |")
        ref_rank = cal["reference"]["mean_by_rank"]
        lines += ["", f"Mean cosine at neighbour rank 1 / 10: reference {ref_rank[0]} / {ref_rank[-1]}; "
                  + "; ".join(f"{r['kind']} {r['n']:,} {r['neighbours']['mean_by_rank'][0]} / "
                              f"{r['neighbours']['mean_by_rank'][-1]}" for r in report["rows"]), "",
                  (f"Reference: {cal['source'].get('images')} Fashion-MNIST test images embedded by "
                   f"{cal['source'].get('model')} ({cal['source'].get('embed_dim')}-d, "
                   f"{cal['source'].get('recipe')} recipe, {cal['source'].get('steps')} steps on class-name "
                   "captions).")]
    lines += ["", "Goals (reported, not asserted):", ""]
    for row in report["rows"]:
        for goal, g in row.get("goals", {}).items():
            lines.append(f"- {row['kind']} {row['n']:,}: {goal}: {'met' if g['met'] else 'NOT met'} "
                         f"({ {k: v for k, v in g.items() if k != 'met'} })")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    log = lambda msg: print(msg, flush=True)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None
    kinds = args.kinds.split(",")
    if "clustered" in kinds and reference is None:
        raise SystemExit(f"{REFERENCE} is missing: run `{Path(__file__).name} calibrate` first (trains a small CLIP)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "index_scale", "dim": 512, "k": K, "queries": args.queries, "singles": args.singles,
              "goals": GOALS, "machine": instruction_set(), "environment": _common.environment(),
              "niceness": os.nice(0), "max_memory": args.max_memory, "autofaiss_query_ms": args.autofaiss_query_ms,
              "load_note": ("measured on a shared, loaded 2-core machine (other jobs running; this run at niceness "
                            f"{os.nice(0)}, load average {os.getloadavg()[0]:.1f} at start): latencies and build "
                            "times are noisy and pessimistic"),
              "rows": []}
    previous = {}
    if args.merge and Path(args.out).is_file():  # keep what was measured before and is not measured now
        measured = {(k, int(n)) for n in args.sizes.split(",") for k in kinds}
        old_rows = json.loads(Path(args.out).read_text())["rows"]
        report["rows"] = [r for r in old_rows if (r["kind"], r["n"]) not in measured]
        previous = {(r["kind"], r["n"]): r for r in old_rows if (r["kind"], r["n"]) in measured}
    if reference is not None:
        report["calibration"] = {"reference": reference["reference"], "tolerance": reference["fit"]["tolerance"],
                                 "source": reference["source"], "generator": reference["generator"]}
    for n in [int(s) for s in args.sizes.split(",")]:
        for kind in kinds:
            p = prepare(kind, n, work, reference, args.queries, log)
            row = {"kind": kind, "n": n, "neighbours": p["neighbours"], "prepare_s": p["prepare_s"],
                   "generator": p["generator"].to_dict()}
            if kind == "clustered":
                row["vs_reference"] = iv.compare(reference["reference"], p["neighbours"],
                                                 reference["fit"]["tolerance"])
                log(f"[{kind} {n:,}] top-10 neighbour cosine quantiles\n  reference (Fashion-MNIST CLIP): "
                    f"{reference['reference']['quantiles']}\n  these vectors (held-out queries):  "
                    f"{p['neighbours']['quantiles']}\n  max gap {row['vs_reference']['max_abs_diff']} "
                    f"(tolerance {row['vs_reference']['tolerance']}: "
                    f"{'within' if row['vs_reference']['within_tolerance'] else 'OUTSIDE'})")
            report["rows"].append(row)
            for part, skipped in (("openeva", args.skip_openeva), ("autofaiss", args.skip_autofaiss)):
                if skipped and part in previous.get((kind, n), {}):  # --merge: keep the earlier measurement
                    row[part] = {**previous[(kind, n)][part], "from_earlier_run": True}
            if not args.skip_openeva:
                row["openeva"] = bench_openeva(p, args, log)
                write_reports(Path(args.out), report)
            if not args.skip_autofaiss:
                row["autofaiss"] = bench_autofaiss(p, args, log)
            row["goals"] = goals(row)
            report["load_average_1m_end"] = round(os.getloadavg()[0], 2)
            write_reports(Path(args.out), report)  # after every row: a run cut short keeps what it measured
    log(markdown(report))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("calibrate", help="train a small CLIP on Fashion-MNIST, cache its neighbour similarities")
    c.add_argument("--work", default=str(ROOT / ".bench-work" / "calibration"))
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--model", default="EVA02-test", help="the CLIP trained (clip_tiny's model by default)")
    c.add_argument("--tolerance", type=float, default=0.03)
    r = sub.add_parser("run", help="build, measure and compare")
    r.add_argument("--sizes", default="1000000", help="comma-separated; 10000000 for the 10M case")
    r.add_argument("--kinds", default="clustered,random")
    r.add_argument("--work", default=str(ROOT / ".bench-work" / "index_scale"), help="vectors and indexes go here")
    r.add_argument("--out", default=str(_common.RESULTS_DIR / "index_scale.json"))
    r.add_argument("--queries", type=int, default=1000)
    r.add_argument("--singles", type=int, default=300, help="single queries timed (of --queries)")
    r.add_argument("--max-memory", default="4G", help="memory budget given to both builders")
    r.add_argument("--available", default="8G", help="autofaiss's current_memory_available")
    r.add_argument("--autofaiss-query-ms", type=float, default=10.0, help="autofaiss's max_index_query_time_ms")
    r.add_argument("--kind", default="auto", help="openeva's index kind")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--timeout", type=float, default=6 * 3600)
    r.add_argument("--concurrency", action="store_true", help="also: 2 reader processes during a write")
    r.add_argument("--concurrency-s", type=float, default=5.0, help="reads kept going after the write")
    r.add_argument("--merge", action="store_true", help="keep --out's rows of other sizes and kinds")
    r.add_argument("--skip-autofaiss", action="store_true")
    r.add_argument("--skip-openeva", action="store_true")
    for name in ("_build", "_search", "_add", "_reader"):  # subprocess workers
        w = sub.add_parser(name)
        if name == "_build":
            w.add_argument("emb")
        w.add_argument("index")
        if name in ("_search", "_reader"):
            w.add_argument("queries")
        if name == "_search":
            w.add_argument("ids_out")
        w.add_argument("--max-memory", default="4G")
        w.add_argument("--kind", default="auto")
        w.add_argument("--target-recall", type=float, default=0.95)
        w.add_argument("--singles", type=int, default=300)
        w.add_argument("--batch", type=int, default=32)
        w.add_argument("--rows", type=int, default=1000)
        w.add_argument("--stop", default="")
    args = ap.parse_args()
    if args.mode == "calibrate":
        import _index_calibration

        result = _index_calibration.build_reference(Path(args.work), REFERENCE, steps=args.steps,
                                                    tolerance=args.tolerance, model=args.model)
        print(json.dumps({"reference": result["reference"]["quantiles"], "fit": result["fit"]["max_abs_diff"]}))
        return 0
    if args.mode == "run":
        return run(args)
    worker = {"_build": worker_build, "_search": worker_search, "_add": worker_add, "_reader": worker_reader}
    print(json.dumps(worker[args.mode](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
