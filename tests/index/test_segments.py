"""Segments: an add writes O(batch) files, deletes hide rows at once, compaction reclaims, writers share a lock,
a crash leaves the previous version live, readers follow with refresh()."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from openeva.index import Index, _write
from openeva.index.segment import SegmentWriter

from .conftest import rows, unit


def _files(folder):
    """path -> (inode, mtime_ns, size) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()}


def test_an_add_is_one_new_segment_and_leaves_the_old_files_untouched(tmp_path):
    v = unit(2000, 16)
    index = Index.from_vectors(v, rows(2000), tmp_path / "idx", kind="ivf")
    before = _files(tmp_path / "idx" / "segments")
    new = unit(5, 16, seed=7)
    assert index.add(new, rows(5, 2000), {"dim": 16}) == 5
    after = _files(tmp_path / "idx" / "segments")
    assert {k: after[k] for k in before} == before  # every old segment file: same inode, mtime and size
    added = {k: after[k] for k in set(after) - set(before)}
    assert len({k.split("/")[0] for k in added}) == 1  # one new segment folder
    assert sum(size for _, _, size in added.values()) < 20_000  # O(batch): 5 rows, not a copy of 2000
    assert index.num_segments == 2 and len(index) == 2005
    assert index.search(new[3], k=1)[0][0]["id"] == "item2003"
    assert index.manifest["recall@10"] is not None and index.manifest["segments"][1]["kind"] == "flat"


def test_add_skips_known_items_and_keeps_ids_that_clash_across_sources(tmp_path):
    index = Index.from_vectors(unit(20, 8), rows(20), tmp_path / "idx")
    assert index.add(unit(25, 8, seed=2), rows(25)) == 5 and len(index) == 25  # items 0..19 are known
    assert index.add(unit(25, 8, seed=2), rows(25)) == 0 and index.num_segments == 2  # nothing new: no write
    other = [{**r, "source": {"path": "/elsewhere/0.jpg"}} for r in rows(1)]
    assert index.add(unit(1, 8, seed=3), other) == 1 and len(index) == 26  # same id, another source


def test_delete_hides_rows_at_once_and_compaction_reclaims_the_space(tmp_path):
    v = unit(600, 16, seed=1)
    index = Index.from_vectors(v, rows(600), tmp_path / "idx")
    index.add(unit(10, 16, seed=2), rows(10, 600))
    reader = Index.open(tmp_path / "idx")
    assert index.delete(["item5", "item603", "no-such-id"]) == 2
    assert len(index) == 608 and not index.has_row(5)
    hits = index.search(v[5], k=600)[0]
    assert "item5" not in {h["id"] for h in hits} and len(hits) == 600
    with pytest.raises(IndexError):
        index.row_meta(5)
    assert reader.search(v[5], k=1)[0][0]["id"] == "item5"  # a reader sees it until it refreshes
    assert reader.refresh() and reader.search(v[5], k=1)[0][0]["id"] != "item5" and not reader.refresh()
    assert index.delete(["item5"]) == 0  # already gone
    old_segments = {p.name for p in (tmp_path / "idx" / "segments").iterdir()}
    index.compact()
    assert index.num_segments == 1 and len(index) == 608 and index.info()["segments"][0] == {
        "name": index.manifest["segments"][0]["name"], "kind": "flat", "rows": 608, "deleted": 0}
    hit = index.search(unit(10, 16, seed=2)[9], k=1)[0][0]
    assert hit["id"] == "item609" and hit["row"] == 607  # rows renumbered: 609 - the two deleted before it
    index.delete(["item7"])  # one more write: the version before compaction is no longer kept
    on_disk = {p.name for p in (tmp_path / "idx" / "segments").iterdir()}
    assert on_disk.isdisjoint(old_segments)  # the deleted rows' space (the old segments) is reclaimed
    assert {h["id"] for h in index.search(v[:20], k=5)[5]}.isdisjoint({"item5", "item603", "item7"})


def test_segments_are_merged_when_they_pile_up(tmp_path, monkeypatch):
    monkeypatch.setattr(_write, "MAX_SEGMENTS", 3)
    v = unit(100, 8)
    index = Index.from_vectors(v[:60], rows(60), tmp_path / "idx")
    for i in range(4):
        index.add(v[60 + 10 * i:70 + 10 * i], rows(10, 60 + 10 * i))
        assert index.num_segments <= 3
    assert len(index) == 100
    assert [index.search(v[j], k=1)[0][0]["id"] for j in (0, 65, 99)] == ["item0", "item65", "item99"]


def test_a_crash_in_the_middle_of_a_write_leaves_the_previous_version_live(tmp_path, monkeypatch):
    v = unit(50, 8)
    index = Index.from_vectors(v[:40], rows(40), tmp_path / "idx")
    live = index.version

    def crash(self):
        raise OSError("simulated crash while writing the segment")

    monkeypatch.setattr(SegmentWriter, "finish", crash)
    with pytest.raises(OSError, match="simulated"):
        index.add(v[40:], rows(10, 40))
    monkeypatch.undo()
    real_replace = os.replace

    def crash_pointer(src, dst):
        if str(dst).endswith("CURRENT"):
            raise OSError("simulated crash before the pointer moves")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_pointer)
    with pytest.raises(OSError, match="before the pointer"):
        index.add(v[40:], rows(10, 40))
    monkeypatch.undo()
    again = Index.open(tmp_path / "idx")
    assert again.version == live and len(again) == 40  # the previous version is still the live one
    assert index.add(v[40:], rows(10, 40)) == 10 and len(Index.open(tmp_path / "idx")) == 50
    names = {p.name for p in (tmp_path / "idx").iterdir()} | {p.name for p in (tmp_path / "idx" / "segments").iterdir()}
    assert not [n for n in names if n.startswith(".tmp-")]  # the crashed writes' leftovers are gone


def _writer(path: str, worker: int, batches: int) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    index = Index.open(path)
    for b in range(batches):
        start = 1000 * (worker + 1) + 10 * b
        index.add(unit(10, 8, seed=start), rows(10, start))


@pytest.mark.slow  # two spawned interpreters import torch (via openeva): ~30 s on a loaded 2-core machine
def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    Index.from_vectors(unit(30, 8), rows(30), tmp_path / "idx")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "idx"), w, 6)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    index = Index.open(tmp_path / "idx")
    assert len(index) == 30 + 2 * 6 * 10
    ids = {row["id"] for part in index._snap.parts for row in part.seg.meta.select(["id"]).to_pylist()}
    assert {f"item{1000 * (w + 1) + i}" for w in range(2) for i in range(60)} <= ids


def test_iter_vectors_yields_the_live_rows(tmp_path):
    v = unit(30, 8)
    index = Index.from_vectors(v, rows(30), tmp_path / "idx")
    index.delete(["item3"])
    got = list(index.iter_vectors(batch=7))
    all_rows = np.concatenate([r for r, _ in got])
    assert 3 not in all_rows and len(all_rows) == 29
    np.testing.assert_allclose(np.concatenate([x for _, x in got]).astype(np.float32),
                               np.delete(v, 3, axis=0), atol=1e-3)
