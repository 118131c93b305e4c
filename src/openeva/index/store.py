"""The on-disk layout of an index: immutable segments, versions that list them, a pointer, a lock.

::

    INDEX/CURRENT                     the live version's name ("v000007"), replaced atomically
    INDEX/LOCK                        the write lock (filelock): one writer at a time, across processes
    INDEX/v000007/manifest.json       model identity, kind, parameters, recall, and the segment list:
                                      [{"name": "s000001", "base": 0, "rows": N, "deleted": "deleted-v000005.npy"}]
    INDEX/segments/s000001/           one immutable segment (see :mod:`openeva.index.segment`)
    INDEX/segments/s000001/deleted-v000005.npy   its tombstones as of version 5 (sorted local rows)

A write (build, add, delete, compact) takes the lock, writes new files under hidden temporary names, renames
them into place, writes the new version folder, and only then points ``CURRENT`` at it: a crash at any step leaves
the previous version live, and its leftovers are removed by the next write. An add writes one new segment and a
version manifest (O(batch)); a delete writes one tombstone file per touched segment. Readers never lock: they
open what ``CURRENT`` names and call ``refresh()`` to follow it. Old versions are removed after
:data:`KEEP_VERSIONS` newer ones exist, with the segments and tombstones only they used, so a reader that has
just read ``CURRENT`` still finds its files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from openeva.runtime import atomic_write_bytes, atomic_write_json

FORMAT = 2
KEEP_VERSIONS = 2  # the live version and the one before it stay on disk (readers retry a vanished one)
LOCK_TIMEOUT_S = 600.0
VERSION = re.compile(r"^v\d{6}$")
SEGMENT = re.compile(r"^s\d{6}$")
_TMP = re.compile(r"^\.tmp-[sv]\d{6}-\d+$")
# what an index folder may hold; uploads/ is where the service keeps images added over HTTP
_OWN_ENTRY = re.compile(r"^(v\d{6}|\.tmp-[sv]\d{6}-\d+|CURRENT|\.CURRENT\..*\.tmp|uploads|LOCK|segments)$")


def check_output_folder(path) -> Path:
    """``path`` as an index output: new, empty, or an openeva index; anything else is refused untouched."""
    root = Path(path).expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"index output {root} is a file, not a folder")
    if root.is_dir() and not (root / "CURRENT").is_file() and any(
            not _OWN_ENTRY.match(p.name) for p in root.iterdir()):
        raise FileExistsError(f"{root} is not empty and is not an openeva index: refusing to write an index "
                              "into it (nothing was changed); pass a new or empty folder")
    return root


def write_lock(root: Path):
    """The folder's write lock (a context manager), shared by every process writing this index."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / "LOCK"), timeout=LOCK_TIMEOUT_S)


def current_name(root: Path) -> str | None:
    try:
        name = (root / "CURRENT").read_text().strip()
    except OSError:
        return None
    return name if VERSION.match(name) else None


def stamp(root: Path) -> tuple | None:
    """What changes when ``CURRENT`` is replaced (inode, mtime, size): a cheap stat for ``refresh()``."""
    try:
        st = os.stat(root / "CURRENT")
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_manifest(root: Path, name: str) -> dict:
    path = root / name / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the index at {root} is damaged; rebuild it with "
                                "`openeva index build EMBEDDINGS --out NEW_FOLDER`") from None
    except ValueError as err:
        raise ValueError(f"{path} is corrupt ({err}); rebuild the index with `openeva index build`") from None
    if manifest.get("format") != FORMAT:
        if (root / name / "index.faiss").is_file() and (root / name / "meta.jsonl").is_file():
            raise ValueError(f"{root} is an index of the old layout (one {name}/index.faiss with vectors.npy and "
                             f"meta.jsonl); convert it with `openeva index upgrade {root}`, or rebuild it with "
                             "`openeva index build EMBEDDINGS --out NEW_FOLDER`")
        raise ValueError(f"{path} has index format {manifest.get('format')!r}, this openeva reads {FORMAT}; "
                         "rebuild the index with `openeva index build`")
    return manifest


def next_number(root: Path) -> int:
    """One more than every version or segment number used in the folder (crashed writes' leftovers included)."""
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    seg = root / "segments"
    names += [p.name for p in seg.iterdir()] if seg.is_dir() else []
    nums = [int(m.group(1)) for n in names for m in [re.match(r"^\.?(?:tmp-)?[sv](\d{6})", n)] if m]
    return max(nums, default=0) + 1


def commit(root: Path, manifest: dict, name: str) -> str:
    """Write version ``name`` with ``manifest`` and make it live; then drop what no kept version uses."""
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_json(tmp / "manifest.json", {**manifest, "format": FORMAT, "version": name,
                                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    fsync_dir(tmp)
    os.replace(tmp, root / name)
    fsync_dir(root)
    atomic_write_bytes(root / "CURRENT", name.encode())
    fsync_dir(root)
    collect_garbage(root)
    return name


def collect_garbage(root: Path) -> None:
    """Remove versions older than the last :data:`KEEP_VERSIONS`, segments and tombstone files no kept version
    names, and crashed writes' temporary folders. Called under the write lock."""
    live = current_name(root)
    versions = sorted(p.name for p in root.iterdir() if VERSION.match(p.name) and p.is_dir())
    if live in versions:
        versions = versions[:versions.index(live) + 1]  # never count a crashed write's newer folder as kept
    keep = versions[-KEEP_VERSIONS:]
    used_segments, used_files = set(), set()
    for name in keep:
        try:
            manifest = json.loads((root / name / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        for seg in manifest.get("segments", []):
            used_segments.add(seg["name"])
            if seg.get("deleted"):
                used_files.add((seg["name"], seg["deleted"]))
        if manifest.get("template"):
            used_segments.add(manifest["template"])
    for p in root.iterdir():
        if ((VERSION.match(p.name) and p.name not in keep) or _TMP.match(p.name)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    seg_root = root / "segments"
    if not seg_root.is_dir():
        return
    for p in seg_root.iterdir():
        if _TMP.match(p.name) or (SEGMENT.match(p.name) and p.name not in used_segments):
            shutil.rmtree(p, ignore_errors=True)
        elif SEGMENT.match(p.name):
            for f in p.glob("deleted-v*.npy"):
                if (p.name, f.name) not in used_files:
                    f.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
