"""Near-duplicate groups (``openeva dedup``) and result folding, on small generated vectors with planted duplicates.

The planted groups are far above the threshold (cosine >= 0.98 inside a group) and every other pair far below it
(random 64-d directions meet at |cosine| < 0.6), so the expected groups are exact.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from openeva.cli import main
from openeva.index import Index
from openeva.index.dedup import (
    UnionFind, find_duplicate_groups, fold_duplicates, hit_vectors, row_metadata, search_folded, write_groups,
)

DIM = 64
PLANTED = {"a": 3, "b": 2, "c": 4}  # group name -> members


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_vectors(n: int = 240, seed: int = 0) -> tuple[np.ndarray, list[str], list[set[str]]]:
    """(n, DIM) unit vectors, their ids, and the expected groups (sets of ids)."""
    rng = np.random.default_rng(seed)
    vecs = _unit(rng.standard_normal((n, DIM)))
    ids = [f"img{i:04d}" for i in range(n)]
    expected, pos = [], 10
    for name, size in PLANTED.items():
        base = vecs[pos]
        members = []
        for j in range(size):
            row = pos + 17 * j  # scattered over the rows (and shards)
            vecs[row] = _unit(base + 0.08 * rng.standard_normal(DIM) / np.sqrt(DIM))
            ids[row] = f"{name}{j}"
            members.append(ids[row])
        expected.append(set(members))
        pos += 1
    sims = vecs @ vecs.T
    group_of = {i: k for k, g in enumerate(expected) for i in g}
    for i in range(n):
        for j in range(i + 1, n):
            same = ids[i] in group_of and group_of.get(ids[i]) == group_of.get(ids[j])
            assert (sims[i, j] >= 0.98) if same else (sims[i, j] < 0.6), (ids[i], ids[j], sims[i, j])
    return vecs, ids, expected


def write_embedding_folder(out: Path, vecs: np.ndarray, ids: list[str], shard_size: int = 100) -> Path:
    """An `openeva embed` output folder (float16 shards) holding ``vecs``."""
    (out / "shards").mkdir(parents=True)
    num_shards = -(-len(vecs) // shard_size)
    for s in range(num_shards):
        lo, hi = s * shard_size, min(len(vecs), (s + 1) * shard_size)
        np.save(out / "shards" / f"{s:05d}.npy", vecs[lo:hi].astype(np.float16))
        (out / "shards" / f"{s:05d}.jsonl").write_text("".join(
            json.dumps({"id": ids[i], "path": f"photos/{ids[i]}.jpg", "caption": None, "width": 8, "height": 8,
                        "source": {"path": f"photos/{ids[i]}.jpg"}}) + "\n" for i in range(lo, hi)))
        (out / "shards" / f"{s:05d}.done.json").write_text(json.dumps({"count": hi - lo, "skipped": []}))
    manifest = {"model": "test-vectors", "config_hash": "0", "weights_hash": "0", "preprocess": None, "dim": DIM,
                "precision": "fp32", "tome_r": 0, "int8": False, "runtime": "torch", "dtype": "float16",
                "text": False, "shard_size": shard_size, "collection": "test", "format_version": 1,
                "status": "complete", "count": len(vecs), "total": len(vecs), "num_shards": num_shards,
                "skipped_count": 0, "skipped": [], "source_skipped": 0}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def planted_index(tmp_path_factory):
    vecs, ids, expected = planted_vectors()
    root = tmp_path_factory.mktemp("dedup")
    emb = write_embedding_folder(root / "emb", vecs, ids)
    Index.build([emb], root / "index")
    return root / "index", vecs, ids, expected


def _id_groups(index, result) -> list[set[str]]:
    meta = row_metadata(index, [r for g in result.groups for r in g])
    return [{meta[r]["id"] for r in g} for g in result.groups]


def test_planted_duplicates_are_grouped_exactly(planted_index):
    path, _, _, expected = planted_index
    index = Index.open(path)
    result = find_duplicate_groups(index, 0.95, batch=64)
    assert result.rows_scanned == len(index)
    groups = _id_groups(index, result)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))
    assert [len(g) for g in result.groups] == sorted((len(g) for g in expected), reverse=True)  # largest first
    assert all(0.95 <= result.best[r] <= 1.0 + 1e-3 for g in result.groups for r in g)


def test_batch_size_does_not_change_the_groups(planted_index):
    path, *_ = planted_index
    index = Index.open(path)
    one = find_duplicate_groups(index, 0.95, batch=1).groups
    assert one == find_duplicate_groups(index, 0.95, batch=1000).groups


def test_a_threshold_above_every_pair_finds_no_group(planted_index):
    index = Index.open(planted_index[0])
    assert find_duplicate_groups(index, 0.9999).groups == []
    with pytest.raises(ValueError, match="cosine"):
        find_duplicate_groups(index, 1.5)


def test_union_find_joins_chains():
    uf = UnionFind()
    for a, b in [(5, 9), (9, 2), (100, 7), (2, 5)]:
        uf.union(a, b)
    assert uf.groups() == [[2, 5, 9], [7, 100]]
    assert uf.find(123) == 123  # never joined: its own set, no memory taken
    assert 123 not in uf.parent


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_cli_writes_the_groups(planted_index, tmp_path, suffix, capsys):
    path, _, _, expected = planted_index
    out = tmp_path / f"groups{suffix}"
    assert main(["dedup", str(path), "--threshold", "0.95", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["groups"] == len(expected) and summary["rows_in_groups"] == sum(PLANTED.values())
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
        got: dict[str, set] = {}
        for r in rows:
            got.setdefault(r["group"], set()).add(r["id"])
            assert r["path"] == f"photos/{r['id']}.jpg" and float(r["score"]) >= 0.95
        groups = list(got.values())
    else:
        data = json.loads(out.read_text())
        assert data["threshold"] == 0.95
        groups = [{r["id"] for r in g["rows"]} for g in data["duplicate_groups"]]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))


def test_cli_refuses_bad_input(planted_index, tmp_path, capsys):
    path = str(planted_index[0])
    assert main(["dedup", path, "--out", str(tmp_path / "groups.txt"), "--no-progress"]) == 2
    assert ".csv or a .json" in capsys.readouterr().err
    assert main(["dedup", path, "--threshold", "2", "--out", str(tmp_path / "g.csv"), "--no-progress"]) == 2
    assert "cosine" in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "nope"), "--out", str(tmp_path / "g.csv"), "--no-progress"]) == 2
    assert not (tmp_path / "g.csv").exists()


def test_write_groups_refuses_an_unknown_format(planted_index, tmp_path):
    index = Index.open(planted_index[0])
    with pytest.raises(ValueError, match=".csv or a .json"):
        write_groups(tmp_path / "g.parquet", find_duplicate_groups(index, 0.95))


def test_fold_duplicates_keeps_the_best_ranked_of_each_set():
    rng = np.random.default_rng(3)
    a, b = _unit(rng.standard_normal((2, DIM)))
    near_a = _unit(a + 0.05 * rng.standard_normal(DIM) / np.sqrt(DIM))
    vectors = np.stack([a, b, near_a, near_a])  # ranks 1..4: the 3rd and 4th fold into the 1st
    hits = [{"rank": i + 1, "score": 0.9 - 0.1 * i, "row": 10 + i, "id": f"x{i}", "path": f"p{i}.jpg"} for i in range(4)]
    folded = fold_duplicates(hits, 0.95, vectors=vectors)
    assert [h["id"] for h in folded] == ["x0", "x1"]
    assert [h["rank"] for h in folded] == [1, 2]
    assert [d["id"] for d in folded[0]["duplicates"]] == ["x2", "x3"] and folded[0]["duplicate_count"] == 2
    assert folded[1]["duplicate_count"] == 0
    assert all(d["similarity"] >= 0.95 for d in folded[0]["duplicates"])
    # the same with the vectors carried by the hits; a threshold above every pair folds nothing
    carried = [{**h, "vector": v} for h, v in zip(hits, vectors)]
    assert [h["id"] for h in fold_duplicates(carried, 0.95)] == ["x0", "x1"]
    assert "vector" not in fold_duplicates(carried, 0.95)[0]
    assert len(fold_duplicates(carried, 1.0 - 1e-9)) >= 3
    assert fold_duplicates([], 0.95) == []


def test_fold_duplicates_on_the_index_s_hits(planted_index):
    path, vecs, ids, _ = planted_index
    index = Index.open(path)
    hits = index.search(vecs[ids.index("c0")], k=8)[0]
    assert {h["id"] for h in hits[:4]} == {"c0", "c1", "c2", "c3"}  # four copies fill the first slots
    folded = fold_duplicates(hits, 0.95, hit_vectors(index, hits))
    assert folded[0]["id"] == "c0" and {d["id"] for d in folded[0]["duplicates"]} == {"c1", "c2", "c3"}
    assert len(folded) == len(hits) - 3 and not any(h["id"].startswith("c") for h in folded[1:])


def test_fold_duplicates_refuses_missing_or_mismatched_vectors():
    hits = [{"rank": 1, "id": "a"}, {"rank": 2, "id": "b"}]
    with pytest.raises(ValueError, match="vectors"):
        fold_duplicates(hits, 0.95)
    with pytest.raises(ValueError, match="one row per hit"):
        fold_duplicates(hits, 0.95, vectors=np.zeros((3, 4)))


def test_search_folded_returns_k_distinct_hits(planted_index):
    path, vecs, ids, _ = planted_index
    index = Index.open(path)
    hits = search_folded(index, vecs[ids.index("c0")], 3, 0.95)
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "c0" and hits[0]["duplicate_count"] == 3  # c1..c3 folded into the best copy
    assert not any(h["id"].startswith("c") for h in hits[1:])  # the other slots go to distinct images
