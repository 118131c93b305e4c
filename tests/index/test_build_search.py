"""Index.build / open / search: exact parity for flat, recall on held-out queries for IVF and IVF-PQ, the kind rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openeva.index import MAX_K, Index, ann

from .conftest import clustered, exact, rows, unit


def test_flat_search_matches_exact_search_and_reopens_from_disk(tmp_path):
    v = unit(400, 24, seed=1)
    q = unit(7, 24, seed=2)
    index = Index.from_vectors(v, rows(400), tmp_path / "idx", model_info={"model": "m", "dim": 24})
    assert index.kind == "flat" and index.manifest["recall@10"] == 1.0 and len(index) == 400
    hits = index.search(q, k=10)
    truth = exact(q, v, 10)
    assert [[h["row"] for h in qh] for qh in hits] == truth.tolist()
    expect = (q @ v.astype(np.float16).astype(np.float32).T)[0, truth[0]]
    assert [h["score"] for h in hits[0]] == pytest.approx(expect.tolist(), abs=1e-5)
    assert hits[0][0]["id"] == f"item{truth[0][0]}" and hits[0][0]["path"].startswith("photos/")
    again = Index.open(tmp_path / "idx")
    assert again.search(q, k=10)[3] == hits[3]
    assert Index.load(tmp_path / "idx").manifest["model"] == "m"


def test_index_folder_survives_the_embedding_arrays_and_is_memory_mapped(tmp_path):
    v = unit(100, 8)
    index = Index.from_vectors(v, rows(100), tmp_path / "idx")
    v[:] = 0  # the caller's array is not what the index reads
    seg = index._snap.parts[0].seg
    assert isinstance(seg.vectors, np.memmap) and seg.vectors.dtype == np.float16
    assert index.search(unit(100, 8)[5], k=1)[0][0]["id"] == "item5"


def test_ivfpq_with_rerank_reaches_target_recall_on_held_out_queries(tmp_path):
    n, d = 3000, 32
    v = clustered(n, d, seed=3)
    budget = n * (d * 4 + 8) // 2  # IVF-flat does not fit: a compressed kind must be chosen
    index = Index.from_vectors(v, rows(n), tmp_path / "idx", max_memory=budget, target_recall=0.95)
    m = index.manifest
    assert index.kind == "ivfpq" and "PQ" in m["factory"] and "re-ranked" in m["kind_reason"]
    assert m["recall@10"] >= 0.95 and "held-out" in m["recall_note"]
    assert m["params"]["nprobe"] <= m["params"]["nlist"]
    # fresh queries, never stored: recall against exact search over every stored vector
    fresh = clustered(300, d, seed=99)
    got = np.array([[h["row"] for h in qh] for qh in index.search(fresh, k=10)])
    truth = exact(fresh, v, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), got.tolist())])
    assert recall >= 0.9
    # without the exact re-rank the product-quantized scores alone recall less
    seg = index._snap.parts[0].seg
    _, raw = ann.search_part(seg.part, "ivfpq", fresh, 10, m["params"])
    raw_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), raw.tolist())])
    assert raw_recall < recall
    # reported scores are the exact ones (from the float16 vectors), not the PQ estimates
    hit = index.search(fresh[:1], k=1)[0][0]
    assert hit["score"] == pytest.approx(float(fresh[0] @ v[hit["row"]].astype(np.float16).astype(np.float32)),
                                         abs=1e-5)


def test_recall_is_measured_on_queries_not_in_the_index(tmp_path):
    v = unit(2000, 16, seed=4)  # random vectors: the hardest case, where stored queries would flatter recall
    fixed = Index.from_vectors(v, rows(2000), tmp_path / "a", kind="ivf", params={"nprobe": 1})
    assert fixed.manifest["params"]["nprobe"] == 1 and fixed.manifest["target_recall"] is None
    assert fixed.manifest["recall@10"] < 0.9  # one list of ~45: most true neighbours are elsewhere
    tuned = Index.from_vectors(v, rows(2000), tmp_path / "b", kind="ivf", target_recall=0.95)
    p = tuned.manifest["params"]
    assert tuned.manifest["recall@10"] >= 0.95 and 1 < p["nprobe"] <= p["nlist"]
    assert len(tuned) == 2000  # the held-out rows were added after the measurement
    assert tuned.search(v[17], k=1)[0][0]["id"] == "item17"
    with pytest.raises(ValueError, match="target_recall"):
        Index.from_vectors(v, rows(2000), tmp_path / "c", kind="ivf", target_recall=1.5)


def test_kind_rule_flat_small_compressed_under_a_budget_and_refusals():
    assert ann.choose(10_000, 512).kind == "flat"
    assert ann.choose(1_000_000, 512).kind == "ivf"  # 2 GiB fits the default 4 GiB budget
    big = ann.choose(10_000_000, 512)
    assert big.kind == "ivfpq" and big.factory.startswith("OPQ64_512,IVF") and big.est_bytes <= 4 * 2**30
    small_budget = ann.choose(10_000_000, 512, max_memory="200M")
    assert small_budget.kind == "ivfpq" and small_budget.params["m"] < 64 and small_budget.est_bytes <= 200 * 2**20
    assert ann.choose(3000, 32, max_memory=3000 * 30).kind == "ivfpq"
    with pytest.raises(ValueError, match="too small"):
        ann.choose(10_000_000, 512, max_memory="10M")
    with pytest.raises(ValueError, match="max-memory"):
        ann.choose(1_000_000, 512, kind="flat", max_memory="1G")
    with pytest.raises(ValueError, match="bad memory size"):
        ann.parse_size("four gigs")
    assert ann.parse_size("1.5G") == int(1.5 * 2**30) and ann.parse_size("512M") == 512 * 2**20


def test_hnsw_kind_and_manifest_states_its_memory_map(tmp_path):
    v = clustered(1500, 16, seed=5)
    index = Index.from_vectors(v, rows(1500), tmp_path / "h", kind="hnsw", target_recall=0.9)
    assert index.kind == "hnsw" and index.manifest["recall@10"] >= 0.9
    assert "not mappable" in index.manifest["mmap"]
    manifest = json.loads((tmp_path / "h" / index.version / "manifest.json").read_text())
    assert manifest["kind_reason"] and manifest["factory"] == "HNSW32,Flat"


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    v = unit(50, 8)
    index = Index.from_vectors(v, rows(50), tmp_path / "idx", model_info={"model": "m", "dim": 8})
    with pytest.raises(ValueError, match="query dimension 12"):
        index.search(unit(1, 12), k=1)
    with pytest.raises(ValueError, match=f"k must be an integer in \\[1, {MAX_K}\\]"):
        index.search(v[0], k=MAX_K + 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(8, np.nan), k=1)
    with pytest.raises(ValueError, match="dimension 12"):
        index.check_compatible({"dim": 12, "model": "b"})
    with pytest.raises(ValueError, match="dimension"):
        index.add(unit(3, 12), rows(3, 100))
    with pytest.raises(ValueError, match="zero vectors"):
        Index.from_vectors(np.zeros((0, 8), np.float32), [], tmp_path / "empty")
    with pytest.raises(ValueError, match="duplicate"):
        Index.from_vectors(v[:2], rows(1) * 2, tmp_path / "dup")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Index.open(tmp_path / "nope")
    (tmp_path / "idx" / "segments" / index.manifest["segments"][0]["name"] / "ann.faiss").write_bytes(b"not faiss")
    with pytest.raises(ValueError, match="corrupt"):
        Index.open(tmp_path / "idx")


def test_an_index_of_the_old_layout_is_refused_with_the_fix_and_upgrades(tmp_path):
    import faiss

    old = tmp_path / "old"
    (old / "v000001").mkdir(parents=True)
    v = unit(30, 8)
    faiss.write_index(faiss.IndexFlatIP(8), str(old / "v000001" / "index.faiss"))
    np.save(old / "v000001" / "vectors.npy", v)
    (old / "v000001" / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(30)))
    (old / "v000001" / "manifest.json").write_text(json.dumps({"model": "m", "dim": 8, "kind": "flat"}))
    (old / "CURRENT").write_text("v000001")
    with pytest.raises(ValueError, match="old layout.*openeva index upgrade"):
        Index.open(old)
    index = Index.upgrade(old)
    assert len(index) == 30 and index.search(v[4], k=1)[0][0]["id"] == "item4"
    assert not (old / "v000001").exists() and len(Index.open(old)) == 30
