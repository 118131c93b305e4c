"""Vectors for the index benchmark: clustered ones calibrated to real embeddings, random ones as the worst case.

Both are written as ``openeva embed`` output folders (``manifest.json`` + ``shards/NNNNN.{npy,jsonl,done.json}``,
float16, L2-normalised), shard by shard, so a 10M set never sits in memory and the index builds from it by
streaming, as it would from a real collection.

Why clusters, and how they are calibrated: an approximate index is only as good as the structure of its data.
Random unit vectors in 512-d have no neighbours to speak of (the top-10 cosine of one against 1M others is ~0.2),
the hardest case; real embeddings have near neighbours (other photos of the same thing). The clustered generator
puts ``cluster_size`` points around each of ``N / cluster_size`` random centres::

    x = normalize(sqrt(a) * centre + sqrt(1 - a) * u),  u a random unit vector, a drawn per cluster

so two points of a cluster meet at cosine ~ ``a`` (random directions in 512-d are nearly orthogonal) and the
top-10 neighbour similarities of a point are set by its cluster's ``a``. The distribution of ``a`` is a
piecewise-linear inverse CDF over fixed quantile levels, fitted (:func:`fit_generator`) until the pooled top-10
neighbour similarities of a generated set match a reference distribution (embeddings of Fashion-MNIST through
a CLIP trained here, ``bench_index_scale.py calibrate``) quantile by quantile within a tolerance. The number of
clusters grows with N at a fixed cluster size, so the neighbourhood of a point, and so the distribution, is the
same at 10k, 1M and 10M (the benchmark measures it again on its held-out queries at full size and prints both).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)  # quantile levels compared and fitted
SHARD_SIZE = 100_000


# ------------------------------------------------------------------------------------------- measuring
def topk_similarities(queries: np.ndarray, base: np.ndarray, k: int = 10, exclude_self: bool = False) -> np.ndarray:
    """(Q, k) cosine similarities of each query's k nearest rows of ``base`` (both unit vectors), exact.

    ``exclude_self``: the queries are the first Q rows of ``base``; a row is not its own neighbour."""
    return exact_topk(queries, [(0, base)], k, exclude_self)[0]


def exact_topk(queries: np.ndarray, blocks, k: int = 10, exclude_self: bool = False,
               step: int = 32_768) -> tuple[np.ndarray, np.ndarray]:
    """(sims (Q, k), rows (Q, k) int64) of exact inner-product search over ``blocks``, an iterable of
    (first row, (n, D) array or memory map) such as :func:`iter_shards`; only ``step`` rows are float32 at once."""
    q = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
    kk = k + 1 if exclude_self else k
    best = np.full((len(q), kk), -np.inf, np.float32)
    best_rows = np.full((len(q), kk), -1, np.int64)
    qrows = np.arange(len(q))
    for first, block in blocks:
        for lo in range(0, len(block), step):
            chunk = np.asarray(block[lo:lo + step], dtype=np.float32)  # (C, D)
            sims = q @ chunk.T  # (Q, C)
            start = first + lo
            if exclude_self:
                inside = (qrows >= start) & (qrows < start + len(chunk))
                sims[qrows[inside], qrows[inside] - start] = -np.inf
            both = np.concatenate([best, sims], axis=1)  # (Q, kk + C)
            rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(chunk)), sims.shape)],
                                  axis=1)
            top = np.argpartition(-both, kk - 1, axis=1)[:, :kk]  # (Q, kk), unordered
            best = np.take_along_axis(both, top, axis=1)
            best_rows = np.take_along_axis(rows, top, axis=1)
    order = np.argsort(-best, axis=1)
    best, best_rows = np.take_along_axis(best, order, axis=1), np.take_along_axis(best_rows, order, axis=1)
    return best[:, :k], best_rows[:, :k]


def describe(sims: np.ndarray) -> dict:
    """Quantiles of the pooled top-k similarities, and the mean at each rank (rank 1 = nearest)."""
    return {"quantiles": {str(lv): round(float(np.quantile(sims, lv)), 4) for lv in LEVELS},
            "mean_by_rank": [round(float(m), 4) for m in sims.mean(axis=0)], "count": int(sims.shape[0])}


def compare(reference: dict, measured: dict, tolerance: float) -> dict:
    """Quantile-by-quantile differences (measured - reference) and whether every one is within ``tolerance``."""
    diffs = {lv: round(measured["quantiles"][lv] - reference["quantiles"][lv], 4) for lv in reference["quantiles"]}
    worst = max(abs(d) for d in diffs.values())
    return {"diff_by_quantile": diffs, "max_abs_diff": round(worst, 4), "tolerance": tolerance,
            "within_tolerance": bool(worst <= tolerance)}


# ------------------------------------------------------------------------------------------- generating
@dataclass(frozen=True)
class Generator:
    """The clustered distribution: ``a_quantiles[i]`` is the inverse CDF of a cluster's ``a`` at ``LEVELS[i]``
    (linear between, clamped at the ends); ``kind="random"`` ignores them (uniform on the sphere)."""

    kind: str = "clustered"
    dim: int = 512
    cluster_size: int = 64
    a_quantiles: tuple = field(default=(0.3, 0.4, 0.45, 0.55, 0.65, 0.75, 0.85, 0.9, 0.95))

    def __post_init__(self):
        if self.kind not in ("clustered", "random"):
            raise ValueError(f"kind must be clustered or random, got {self.kind!r}")
        if self.dim < 2 or self.cluster_size < 2:
            raise ValueError("dim and cluster_size must be >= 2")
        if len(self.a_quantiles) != len(LEVELS) or not all(0 <= a < 1 for a in self.a_quantiles):
            raise ValueError(f"a_quantiles needs {len(LEVELS)} values in [0, 1)")

    def rows(self, start: int, stop: int, seed: int) -> np.ndarray:
        """(stop - start, dim) float32 unit vectors: rows ``start..stop`` of the set ``seed`` names.

        Whole clusters are generated from the cluster's own seed, so any row range gives the same rows."""
        if self.kind == "random":
            return _unit(np.random.default_rng([seed, start, stop]).standard_normal((stop - start, self.dim)))
        m = self.cluster_size
        out = np.empty((stop - start, self.dim), np.float32)
        levels = np.array((0.0, *LEVELS, 1.0))
        values = np.array((self.a_quantiles[0], *self.a_quantiles, self.a_quantiles[-1]))
        for c in range(start // m, (stop - 1) // m + 1):
            rng = np.random.default_rng([seed, c])
            a = float(np.interp(rng.random(), levels, values))
            centre = _unit(rng.standard_normal((1, self.dim)))  # (1, D)
            pts = np.sqrt(a) * centre + np.sqrt(1 - a) * _unit(rng.standard_normal((m, self.dim)))  # (m, D)
            lo, hi = max(start, c * m), min(stop, (c + 1) * m)
            out[lo - start:hi - start] = _unit(pts)[lo - c * m:hi - c * m]
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def query_rows(gen: Generator, n_base: int, n_queries: int, seed: int) -> np.ndarray:
    """Held-out queries from the same distribution: for the clustered kind, new points of random existing clusters
    (a photo not in the collection, of something that is), never stored vectors (which would find themselves)."""
    if gen.kind == "random":
        return gen.rows(0, n_queries, seed + 1_000_003)
    rng = np.random.default_rng([seed, 7])
    clusters = rng.choice(max(1, n_base // gen.cluster_size), size=n_queries, replace=False)
    out = np.empty((n_queries, gen.dim), np.float32)
    for i, c in enumerate(clusters):  # the cluster's centre and a, regenerated; a new point of it
        crng = np.random.default_rng([seed, int(c)])
        a = float(np.interp(crng.random(), (0.0, *LEVELS, 1.0),
                            (gen.a_quantiles[0], *gen.a_quantiles, gen.a_quantiles[-1])))
        centre = _unit(crng.standard_normal((1, gen.dim)))
        u = _unit(rng.standard_normal((1, gen.dim)))
        out[i] = _unit(np.sqrt(a) * centre + np.sqrt(1 - a) * u)[0]
    return out


def fit_generator(reference: dict, dim: int = 512, cluster_size: int = 64, n: int = 20_000, probes: int = 2000,
                  tolerance: float = 0.03, rounds: int = 8, seed: int = 0, log=print) -> tuple[Generator, dict]:
    """A clustered generator whose pooled top-10 neighbour similarities (``probes`` points against ``n``) match
    ``reference`` (a :func:`describe` dict) within ``tolerance`` at every quantile level, by quantile mapping:
    each round moves every ``a`` quantile by the gap measured at its level."""
    ref = np.array([reference["quantiles"][str(lv)] for lv in LEVELS])
    a = np.clip(ref - 0.08 * (1 - ref), 0.0, 0.995)  # first guess: top-10 sims sit a little above a
    gen, fit = None, None
    for r in range(rounds):
        gen = Generator(dim=dim, cluster_size=cluster_size, a_quantiles=tuple(round(float(v), 5) for v in a))
        base = gen.rows(0, n, seed)
        probe_rows = np.random.default_rng(seed).choice(n, size=min(probes, n), replace=False)
        sims = topk_similarities(base[probe_rows], np.concatenate([base[probe_rows],
                                                                    np.delete(base, probe_rows, axis=0)]),
                                 exclude_self=True)
        measured = describe(sims)
        fit = compare(reference, measured, tolerance)
        log(f"  calibration round {r}: max |quantile gap| {fit['max_abs_diff']:.3f} (tolerance {tolerance})")
        if fit["within_tolerance"]:
            break
        got = np.array([measured["quantiles"][str(lv)] for lv in LEVELS])
        a = np.maximum.accumulate(np.clip(a + 0.9 * (ref - got), 0.0, 0.995))  # monotone inverse CDF
    return gen, {"fit_n": n, "fit_probes": probes, "rounds": r + 1, **fit, "measured": measured}


# --------------------------------------------------------------------------------------- writing shards
def write_embedding_folder(out: Path, gen: Generator, n: int, seed: int, shard_size: int = SHARD_SIZE,
                           log=print) -> Path:
    """``n`` rows of ``gen`` as an ``openeva embed`` folder (float16 shards), resumable: complete shards are kept.

    The manifest names the generator, so a folder made with other settings is refused rather than mixed."""
    from openeva.runtime import atomic_write_json

    out = Path(out)
    identity = {"model": f"synthetic-{gen.kind}", "config_hash": _hash(gen.to_dict()), "weights_hash": f"seed{seed}",
                "preprocess": None, "dim": gen.dim, "precision": "fp16", "tome_r": 0, "int8": False,
                "runtime": "synthetic", "dtype": "float16", "text": False, "shard_size": shard_size,
                "collection": f"{gen.kind}-{n}-{seed}", "format_version": 1, "generator": gen.to_dict()}
    manifest = out / "manifest.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("config_hash") != identity["config_hash"] or old.get("collection") != identity["collection"]:
            raise ValueError(f"{out} holds other vectors ({old.get('collection')}); remove it or use another --work")
        if old.get("status") == "complete":
            return out
    (out / "shards").mkdir(parents=True, exist_ok=True)
    num_shards = -(-n // shard_size)
    atomic_write_json(manifest, {**identity, "source": "benchmarks/_index_vectors.py", "status": "running",
                                 "count": None, "total": n})
    for s in range(num_shards):
        done = out / "shards" / f"{s:05d}.done.json"
        if done.is_file():
            continue
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        vecs = gen.rows(lo, hi, seed).astype(np.float16)  # (n_s, D)
        _save_npy(out / "shards" / f"{s:05d}.npy", vecs)
        lines = "".join(json.dumps({"id": str(i), "path": f"synthetic/{i:09d}.jpg", "caption": None, "width": 0,
                                    "height": 0, "source": {"path": f"synthetic/{i:09d}.jpg"}}) + "\n" for i in range(lo, hi))
        tmp = out / "shards" / f".{s:05d}.jsonl.tmp"
        tmp.write_text(lines)
        os.replace(tmp, out / "shards" / f"{s:05d}.jsonl")
        atomic_write_json(done, {"count": hi - lo, "skipped": []})
        if s % 10 == 9 or s == num_shards - 1:
            log(f"  {out.name}: {hi:,} / {n:,} rows written")
    atomic_write_json(manifest, {**identity, "source": "benchmarks/_index_vectors.py", "status": "complete",
                                 "count": n, "total": n, "num_shards": num_shards, "skipped_count": 0, "skipped": [],
                                 "source_skipped": 0})
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _hash(d: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def iter_shards(folder: Path):
    """(start row, (n, D) float16 memory map) of each shard of an embedding folder, in order."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    start = 0
    for s in range(manifest["num_shards"]):
        arr = np.load(Path(folder) / "shards" / f"{s:05d}.npy", mmap_mode="r")
        yield start, arr
        start += len(arr)


def save_flat_npy(folder: Path, path: Path) -> Path:
    """All vectors of an embedding folder as one float32 ``.npy`` (autofaiss reads a folder of these), streamed."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(manifest["count"], manifest["dim"]))
    for start, arr in iter_shards(folder):
        out[start:start + len(arr)] = arr
    out.flush()
    del out
    os.replace(tmp, path)
    return path
