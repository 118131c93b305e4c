"""Filters (path prefix / glob, where, width/height), threshold, range search: the same answers as exact search
over the allowed rows, k hits whenever k rows match."""

from __future__ import annotations

import numpy as np
import pytest

from openeva.index import EXACT_SCAN, Index, SearchFilter

from .conftest import clustered, rows, unit


def _exact_filtered(q, v, allowed, k):
    s = q @ v.astype(np.float16).astype(np.float32).T
    s[:, ~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [[int(r) for r in row if np.isfinite(s[i, r])] for i, row in enumerate(order)]


@pytest.fixture(scope="module")
def data():
    n, d = 6000, 16
    v = clustered(n, d, seed=8)
    meta = rows(n, camera=lambda i: ["X100", "A7", "Z6"][i % 3], year=lambda i: 2000 + i % 25)
    return v, meta


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filtered_search_equals_exact_search_over_the_allowed_rows(tmp_path, data, kind):
    v, meta = data
    index = Index.from_vectors(v, meta, tmp_path / kind, kind=kind, target_recall=0.99)
    q = clustered(20, 16, seed=9)
    paths = np.array([m["path"] for m in meta])
    cases = [
        (SearchFilter(path_prefix="photos/2024/"), np.char.startswith(paths, "photos/2024/")),  # half the rows
        (SearchFilter.parse("path=photos/2023/1*.jpg"), np.array([p.startswith("photos/2023/1") for p in paths])),
        (SearchFilter.parse(where=["camera=A7"]), np.arange(len(v)) % 3 == 1),
        (SearchFilter.parse(["camera=Z6", "width>=5000"], min_height=52, max_height=54),
         (np.arange(len(v)) % 3 == 2) & (np.arange(len(v)) + 100 >= 5000) & np.isin(50 + np.arange(len(v)) % 7,
                                                                                    [52, 53, 54])),
        (SearchFilter(where={"year": [2003, 2004]}), np.isin(2000 + np.arange(len(v)) % 25, [2003, 2004])),
    ]
    for flt, allowed in cases:
        got = [[h["row"] for h in qh] for qh in index.search(q, k=10, filter=flt)]
        want = _exact_filtered(q, v, allowed, 10)
        assert all(len(g) == min(10, allowed.sum()) for g in got), flt
        overlap = np.mean([len(set(g) & set(w)) / max(1, len(w)) for g, w in zip(got, want)])
        assert overlap >= (1.0 if kind == "flat" or allowed.sum() <= EXACT_SCAN else 0.9), (flt, overlap)
        assert all(allowed[r] for g in got for r in g)


def test_a_very_selective_filter_still_returns_k_hits_from_an_ivf_index(tmp_path, data):
    v, meta = data
    index = Index.from_vectors(v, meta, tmp_path / "ivf", kind="ivf", params={"nprobe": 1})
    flt = SearchFilter.parse(["width>=6070"])  # 30 rows, scattered over the lists
    hits = index.search(unit(3, 16, seed=1), k=10, filter=flt)
    assert [len(h) for h in hits] == [10, 10, 10] and all(h["width"] >= 6070 for qh in hits for h in qh)
    assert index.search(v[0], k=5, filter=SearchFilter(where={"camera": "Leica"})) == [[]]
    assert index.search(v[0], k=5, filter=SearchFilter(where={"no_such_column": "x"})) == [[]]


def test_threshold_drops_low_scores_and_range_search_matches_exact(tmp_path, data):
    v, meta = data
    index = Index.from_vectors(v[:1000], meta[:1000], tmp_path / "flat")
    hits = index.search(v[0], k=100, threshold=0.8)[0]
    exact = v[:1000].astype(np.float16).astype(np.float32) @ v[0]
    assert len(hits) == min(100, int((exact >= 0.8).sum())) and all(h["score"] >= 0.8 for h in hits)
    rows_, scores = index.range_search(v[:2], 0.8)[0]
    np.testing.assert_array_equal(np.sort(rows_), np.flatnonzero(exact >= 0.8))
    assert np.all(np.diff(scores) <= 0)
    index.delete(["item0"])
    assert 0 not in index.range_search(v[:1], 0.5)[0][0]


def test_bad_filters_are_refused_with_the_expression_quoted():
    for text, match in [("path~x", "bad filter 'path~x'"), ("width>=wide", "needs an integer"),
                        ("path>=a", "path takes '='"), ("camera>3", "takes '='"), ("a!=b", "not supported")]:
        with pytest.raises(ValueError, match=match):
            SearchFilter.parse(text)
    with pytest.raises(ValueError, match="COLUMN=VALUE"):
        SearchFilter.parse(where=["camera"])
    with pytest.raises(ValueError, match="range is empty"):
        SearchFilter(width=(10, 5))
    assert SearchFilter.parse().empty and not SearchFilter.parse("path=a/").empty
    assert SearchFilter.parse("path=a/*").path_glob == "a/*" and SearchFilter.parse("path=a/").path_prefix == "a/"


def test_relative_paths_match_from_a_folder_boundary():
    import pyarrow as pa

    table = pa.table({"path": ["/home/me/photos/2024/a.jpg", "/home/me/myphotos/2024/b.jpg", "photos/2024/c.jpg",
                               "/srv/photos/2023/d.jpg"]})
    assert SearchFilter.parse("path=photos/2024/*").mask(table).tolist() == [True, False, True, False]
    assert SearchFilter.parse("path=photos/2024/").mask(table).tolist() == [True, False, True, False]
    assert SearchFilter.parse("path=/home/me/").mask(table).tolist() == [True, True, False, False]
    assert SearchFilter.parse("path=/srv/*.jpg").mask(table).tolist() == [False, False, False, True]


def test_glob_patterns_match_like_fnmatch():
    import fnmatch

    import pyarrow as pa
    import pyarrow.compute as pc

    from openeva.index.filters import glob_regex

    paths = ["a/sub/x.png", "a/b.png", "a/sub/y-1.jpg", "[x]/z.png", "a/c.png", "a.b/c(d).png"]
    for glob in ["*/sub/*", "a/?.png", "*.jpg", "a/[bc].png", "a/[!b].png", "*-1*", "a.b/c(d)*", "**"]:
        got = pc.match_substring_regex(pa.array(paths), glob_regex(glob)).to_pylist()
        assert got == [fnmatch.fnmatchcase(p, glob) for p in paths], glob


def test_range_search_on_ivf_kinds_and_stored_vectors_by_row(tmp_path, data):
    v, meta = data
    for kind, extra in (("ivf", {}), ("ivfpq", {"max_memory": 6000 * 20})):
        index = Index.from_vectors(v, meta, tmp_path / kind, kind=kind, **extra)
        exact = v.astype(np.float16).astype(np.float32) @ v[:5].T  # (N, 5)
        for i, (rows_, scores) in enumerate(index.range_search(v[:5], 0.9)):
            want = set(np.flatnonzero(exact[:, i] >= 0.9).tolist())
            assert set(rows_.tolist()) <= want and len(set(rows_.tolist())) >= 0.8 * len(want), kind
            np.testing.assert_allclose(scores, exact[rows_, i], atol=1e-5)
    np.testing.assert_array_equal(index.vectors([7, 3]), v[[7, 3]].astype(np.float16))
    index.delete(["item3"])
    with pytest.raises(IndexError):
        index.vectors([3])
