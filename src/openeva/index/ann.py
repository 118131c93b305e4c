"""Which FAISS index a collection gets, how it is trained, read from a memory map and searched.

The rule (``kind="auto"``), stated with its reason in every manifest (``kind_reason``):

* ``flat`` (``IndexFlatIP``, exact) up to :data:`FLAT_MAX` vectors: brute force over 50k vectors is a few
  milliseconds a query and needs no training, so small collections keep exact answers.
* ``ivf`` (``IVF{nlist},Flat``) above that while its footprint ``N * (4 D + 8)`` bytes fits ``max_memory``
  (default :data:`DEFAULT_MAX_MEMORY`): scores inside the probed lists are exact, only lists are skipped.
* ``ivfpq`` (``OPQ{m}_{D},IVF{nlist},PQ{m}x{bits}np``; no OPQ below :data:`OPQ_MIN` vectors) when IVF-flat
  does not fit: ``m`` is the largest sub-quantizer count dividing ``D`` whose codes ``N * (m + 8)`` bytes fit the
  budget ("np": no polysemous training, useless when candidates are re-ranked). Product-quantized scores are
  approximate, so the top ``k * reorder`` candidates are re-ranked exactly from the float16 vectors kept
  (memory-mapped) beside the index: recall is then bounded by the probed lists, not by the codes. A budget even the smallest code cannot meet is refused with the size it would need.
* ``hnsw`` (``HNSW32,Flat``) only when asked: its graph must sit in memory (it is not memory-mapped).

``nlist`` is about ``4 sqrt(N)`` but at most one list per 39 training vectors (FAISS's floor for k-means), and the
training sample is at most :data:`TRAIN_MAX` vectors read from the stream, so training stays bounded at any N.

Memory maps: IVF kinds are read with ``IO_FLAG_MMAP`` (inverted lists stay on disk, paged in on demand); flat and
HNSW with ``IO_FLAG_MMAP_IFC`` (the stored vectors are mapped; HNSW's graph links are read into memory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 50_000
DEFAULT_MAX_MEMORY = 4 * 2**30
TRAIN_MAX = 2**18  # training vectors read from the stream (float32: 512 MiB at D=512)
OPQ_MIN = 10_000  # OPQ trains a 256-centroid PQ: below ~39 * 256 vectors it is noise
PQ_M = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
REORDER = 10  # ivfpq: candidates re-ranked exactly = k * reorder
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def faiss_module():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("indexing needs faiss: pip install 'openeva[serve]' (faiss-cpu)") from e
    return faiss


def parse_size(value) -> int | None:
    """Bytes from ``4G``, ``512M``, ``1.5GB``, ``2GiB`` or a number (powers of 1024); None stays None."""
    if value is None or isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"bad memory size {value!r}: write e.g. 4G, 512M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass(frozen=True)
class Choice:
    """The index a collection of ``n`` vectors gets: kind, FAISS factory string, parameters, and why."""

    kind: str
    factory: str
    params: dict = field(default_factory=dict)
    reason: str = ""
    est_bytes: int = 0


def nlist_for(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), min(n, TRAIN_MAX) // 39 or 1, 65536))


def choose(n: int, dim: int, kind: str = "auto", max_memory=None) -> Choice:
    """The index for ``n`` vectors of dimension ``dim`` under ``max_memory`` bytes (see the module doc)."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    given = parse_size(max_memory)
    if given is not None and given <= 0:
        raise ValueError(f"max_memory must be positive, got {max_memory!r}")
    budget = given if given is not None else DEFAULT_MAX_MEMORY
    flat_b, ivf_b = n * dim * 4, n * (dim * 4 + 8)
    nlist = nlist_for(n)
    if kind == "auto":
        if n <= FLAT_MAX and flat_b <= budget:
            return Choice("flat", "Flat", {}, f"{n} vectors <= {FLAT_MAX}: exact search is fast enough and needs "
                          f"no training ({human(flat_b)})", flat_b)
        if ivf_b <= budget:
            return _ivf(nlist, f"{n} vectors > {FLAT_MAX}: IVF-flat (exact scores in the probed lists) fits the "
                        f"memory budget: {human(ivf_b)} <= {human(budget)}", ivf_b)
        choice = _ivfpq(n, dim, nlist, budget)
        if choice is None:
            need = n * (1 + 8)
            raise ValueError(f"max_memory {human(budget)} is too small for {n} vectors: even the smallest "
                             f"compressed index (PQ1) needs {human(need)}; raise --max-memory")
        return Choice(choice.kind, choice.factory, choice.params,
                      f"IVF-flat would need {human(ivf_b)} > budget {human(budget)}; {choice.reason}", choice.est_bytes)
    if kind == "flat":
        choice = Choice("flat", "Flat", {}, "asked for (exact search)", flat_b)
    elif kind == "ivf":
        choice = _ivf(nlist, "asked for", ivf_b)
    elif kind == "hnsw":
        choice = Choice("hnsw", "HNSW32,Flat", {"M": 32, "ef_construction": 80, "ef_search": 64},
                        "asked for (graph in memory, not memory-mapped)", n * (dim * 4 + 32 * 2 * 4 + 8))
    else:
        choice = _ivfpq(n, dim, nlist, budget if given is not None else max(budget, n * 72))
        if choice is None:
            raise ValueError(f"max_memory {human(budget)} is too small for {n} vectors even as PQ1 codes")
        choice = Choice(choice.kind, choice.factory, choice.params, f"asked for; {choice.reason}", choice.est_bytes)
    if given is not None and choice.est_bytes > given:
        raise ValueError(f"--kind {kind} for {n} vectors of dimension {dim} needs about {human(choice.est_bytes)}, "
                         f"over --max-memory {human(given)}; use --kind auto (picks a compressed index) or ivfpq")
    return choice


def _ivf(nlist: int, reason: str, est: int) -> Choice:
    return Choice("ivf", f"IVF{nlist},Flat", {"nlist": nlist, "nprobe": 1}, reason, est)


def _ivfpq(n: int, dim: int, nlist: int, budget: int) -> Choice | None:
    for m in PQ_M:
        if m <= dim and dim % m == 0 and n * (m + 8) <= budget:
            bits = 8 if min(n, TRAIN_MAX) >= 39 * 256 else max(1, min(8, int(math.log2(max(2, n // 39)))))
            opq = f"OPQ{m}_{dim}," if n >= OPQ_MIN and bits == 8 else ""
            return Choice("ivfpq", f"{opq}IVF{nlist},PQ{m}x{bits}np",
                          {"nlist": nlist, "nprobe": 1, "m": m, "bits": bits, "opq": bool(opq), "reorder": REORDER},
                          f"PQ{m}x{bits} codes take {human(n * (m + 8))} (budget {human(budget)}); the top k*{REORDER} "
                          "candidates are re-ranked exactly from the float16 vectors", n * (m + 8))
    return None


def new_index(choice: Choice, dim: int):
    faiss = faiss_module()
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "hnsw":
        index.hnsw.efConstruction = int(choice.params.get("ef_construction", 80))
    return index


def needs_training(kind: str) -> bool:
    return kind in ("ivf", "ivfpq")


def train_size(choice: Choice, n: int) -> int:
    if not needs_training(choice.kind):
        return 0
    want = 64 * int(choice.params["nlist"])
    if choice.kind == "ivfpq":
        want = max(want, 64 * 2 ** int(choice.params["bits"]))
    return min(n, TRAIN_MAX, max(want, 10_000))


def train(choice: Choice, dim: int, sample: np.ndarray, seed: int):
    """An empty index of ``choice`` trained on ``sample`` (S, D) float32."""
    faiss = faiss_module()
    index = new_index(choice, dim)
    if needs_training(choice.kind):
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.verbose = False
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def read_part(path, kind: str):
    """A segment's FAISS file from a memory map (see the module doc for what each kind maps)."""
    faiss = faiss_module()
    flag = faiss.IO_FLAG_MMAP if needs_training(kind) else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(str(path), flag)
    except RuntimeError as err:
        raise ValueError(f"the index file {path} is corrupt or unreadable ({str(err).splitlines()[0][:200]}); "
                         "rebuild the index with `openeva index build`") from None


def search_part(part, kind: str, q: np.ndarray, k: int, params: dict, selector=None, nprobe: int | None = None):
    """(scores (Q, k), ids (Q, k)) from one FAISS part; ``selector`` restricts the ids it may return."""
    faiss = faiss_module()
    if kind in ("ivf", "ivfpq"):
        sp = faiss.SearchParametersIVF(nprobe=int(nprobe or params.get("nprobe", 1)))
    elif kind == "hnsw":
        sp = faiss.SearchParametersHNSW(efSearch=max(int(params.get("ef_search", 64)), k))
    else:
        sp = faiss.SearchParameters()
    if selector is not None:
        sp.sel = selector
    return part.search(np.ascontiguousarray(q, dtype=np.float32), k, params=sp)


def bitmap_selector(mask: np.ndarray):
    """(selector, keep-alive bytes) allowing the rows where ``mask`` (n,) is True."""
    faiss = faiss_module()
    bits = np.packbits(mask.astype(bool), bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


def exact_topk(q: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of (Q, D) queries among ``vectors[rows]`` (memory-mapped float16): (scores, rows), each
    (Q, k') sorted by score, k' = min(k, len(rows))."""
    if len(rows) == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    cand = np.asarray(vectors[np.sort(rows)], dtype=np.float32)  # (R, D)
    rows = np.sort(rows)
    scores = q @ cand.T  # (Q, R)
    kk = min(k, len(rows))
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < len(rows) else np.tile(np.arange(len(rows)),
                                                                                          (len(q), 1))
    s = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, axis=1), rows[np.take_along_axis(top, order, axis=1)]


def search_segment(part, kind: str, params: dict, vectors: np.ndarray, q: np.ndarray, k: int, selector=None,
                   nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores (Q, k), local rows (Q, k); -1 where fewer) of one segment. IVF-PQ asks FAISS for
    ``k * reorder`` candidates and re-scores them exactly from the float16 ``vectors`` (N, D)."""
    reorder = int(params.get("reorder", REORDER)) if kind == "ivfpq" else 1
    kk = min(k * reorder, part.ntotal) if part.ntotal else k
    scores, ids = search_part(part, kind, q, max(kk, 1), params, selector, nprobe)  # (Q, kk)
    if kind != "ivfpq":
        return scores[:, :k], ids[:, :k]
    return rerank(q, ids, vectors, k)


def rerank(q: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate rows ``ids`` (Q, K; -1 = none) from ``vectors``: the top ``k`` per query."""
    valid = ids >= 0
    uniq = np.unique(ids[valid])
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    if len(uniq) == 0:
        return out_s, out_i
    cand = np.asarray(vectors[uniq], dtype=np.float32)  # (U, D), sorted rows: sequential reads of the map
    exact = q @ cand.T  # (Q, U)
    pos = np.searchsorted(uniq, np.where(valid, ids, uniq[0]))  # (Q, K) column of each candidate
    s = np.where(valid, np.take_along_axis(exact, pos, axis=1), -np.inf)  # (Q, K)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(s, order, axis=1)
    top_i = np.where(np.isfinite(top_s), np.take_along_axis(ids, order, axis=1), -1)
    out_s[:, :top_s.shape[1]], out_i[:, :top_i.shape[1]] = top_s, top_i
    return out_s, out_i
