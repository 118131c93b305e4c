"""Embed a collection into shards of vectors, resumably and exactly (``openeva embed``).

Layout of an output folder::

    manifest.json               model identity, dimension, preprocessing, dtype, counts, skipped files
    shards/00000.npy            (n, D) image vectors (float16 or float32), L2-normalised
    shards/00000.text.npy       (n, D) caption vectors, zero rows where an image has no caption (--text)
    shards/00000.jsonl          one row per vector: id, path, caption, width, height, source
    shards/00000.done.json      written last: marks the shard complete, lists its skipped items

Shard ``s`` always covers items ``[s * shard_size, (s + 1) * shard_size)`` of the collection and is encoded in
fixed batches that never cross a shard boundary, so a rerun after any crash (kill -9 included) recomputes
exactly the unfinished shards, with the same batches, and gives the same vectors as an uninterrupted run.
Each file lands by ``os.replace``; the ``.done.json`` marker is written last, so a torn shard is redone.
Under ``torchrun`` (or ``rank``/``world_size``) rank ``r`` takes shards ``r, r + W, ...``: no overlap.

Tar shards in a store (``s3://``, ``http(s)://``, ``pipe:``...) are embedded in one streaming pass: each input
shard is downloaded once to a local temporary file (the next ones while one is embedded), indexed and embedded
from there, and deleted once its items are encoded; no index pass reads the whole collection first. Item
numbers are then learnt as the shards go by: ``inputs.json`` (the ledger) records each input shard's item
count, key hash and skipped entries, written before any output shard that depends on it is marked done. A
rerun jumps over input shards whose items all lie in done output shards (no download) and checks every shard
it reads again against the ledger (a changed shard is refused, as the item numbering would move). Each rank
reads every input shard whose count it does not yet know (to number the items), then only those that hold
items of its unfinished output shards. The collection's identity there is the list of shard names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from openeva.data.captions import clean_caption
from openeva.data.collection import DECODE_ERRORS, ImageCollection, open_collection
from openeva.data.images import open_rgb
from openeva.data.sources import (download, fetch_files, is_local, local_mirror, source_name,
                                  upload_file)
from openeva.index.shards import fetch_embeddings
from openeva.runtime import atomic_write_bytes, atomic_write_json, precision_of
from openeva.serve.encoder import Encoder, load_encoder

DTYPES = ("float16", "float32")
FORMAT_VERSION = 1
# Settings that must match between a run and the folder it resumes into.
_IDENTITY_KEYS = ("model", "config_hash", "weights_hash", "preprocess", "dim", "precision", "tome_r", "int8",
                  "runtime", "dtype", "text", "shard_size", "collection")


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


class _Decoded(torch.utils.data.Dataset):
    """Item i -> (tensor or None, i, width, height, error); decoding happens in DataLoader workers."""

    def __init__(self, collection: ImageCollection, preprocess):
        self.collection, self.preprocess = collection, preprocess

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, i: int):
        try:
            image = self.collection.load(i)
        except DECODE_ERRORS as err:
            return None, i, 0, 0, f"{type(err).__name__}: {err}"
        return self.preprocess(image), i, image.width, image.height, None


def _collate(items):
    ok = [it for it in items if it[0] is not None]
    pixels = torch.stack([it[0] for it in ok]) if ok else None  # (B, 3, H, W)
    return pixels, [it[1:4] for it in ok], [(it[1], it[4]) for it in items if it[0] is None]


@dataclass
class EmbedPlan:
    collection: ImageCollection
    shard_size: int
    world_size: int = 1
    rank: int = 0

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.collection) / self.shard_size)

    def shard_range(self, s: int) -> range:
        return range(s * self.shard_size, min((s + 1) * self.shard_size, len(self.collection)))

    @property
    def total(self) -> int:
        return len(self.collection)

    def my_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if s % self.world_size == self.rank]


def resumed_precision(out) -> str | None:
    """The precision (fp32 / bf16 / fp16) of the unfinished torch run in ``out``, or None if there is none."""
    manifest = Path(out).expanduser() / "manifest.json"
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if old.get("runtime") != "torch" or old.get("int8"):
        return None  # ONNX graphs and int8 are fp32 whatever is asked
    try:
        return precision_of(old.get("precision", ""))
    except ValueError:
        return None


def shard_done(out: Path, s: int) -> bool:
    return (out / "shards" / f"{s:05d}.done.json").is_file()


def _check_identity(out: Path, identity: dict) -> None:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"output folder {out} is not empty and has no manifest.json: choose a new --out")
        return
    old = json.loads(manifest.read_text())
    diffs = [k for k in _IDENTITY_KEYS if old.get(k) != identity.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: existing {old.get(k)!r} vs now {identity.get(k)!r}" for k in diffs[:3])
        raise ValueError(f"{out} holds embeddings made with other settings ({shown}); use another --out "
                         "or the same model/preprocessing/options to resume")


def embed(src, model: str | None = None, out=None, *, pretrained: str | None = None, encoder: Encoder | None = None,
          dtype: str = "float16", text: bool = False, batch_size: int = 64, shard_size: int = 4096,
          workers: int = 0, image_key: str | None = None, caption_key: str | None = None, rank: int = 0,
          world_size: int = 1, progress: bool = True) -> dict:
    """Embed every image of ``src`` into ``out`` (resuming what is there); returns the manifest dict.

    ``model`` is a registered CLIP name or checkpoint directory (or pass a ready ``encoder``).
    """
    if out is None:
        raise ValueError("embed needs an output folder (out=...)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1 or workers < 0:
        raise ValueError("batch_size and shard_size must be >= 1, workers >= 0")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    remote = None if is_local(str(out)) else str(out).rstrip("/")
    out = _pull_remote_state(remote) if remote else Path(out).expanduser()
    streamed = streamed_shards(src)
    collection = None if streamed else open_collection(src, image_key=image_key, caption_key=caption_key)
    if encoder is None:
        if model is None:
            raise ValueError("embed needs a model name (or an encoder)")
        encoder = load_encoder(model, pretrained, precision=resumed_precision(out) or "auto")
    identity = {**encoder.info, "dtype": dtype, "text": bool(text), "shard_size": shard_size,
                "collection": _names_fingerprint(streamed) if streamed else collection.fingerprint(),
                "format_version": FORMAT_VERSION}
    _check_identity(out, identity)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    if not (out / "manifest.json").is_file():
        atomic_write_json(out / "manifest.json", {**identity, "source": str(src), "status": "running",
                                                   "count": None,
                                                   "total": None if streamed else len(collection)})
        if remote:
            upload_file(out / "manifest.json", f"{remote}/manifest.json")
    for leftover in (out / "shards").glob(".*.tmp-*"):  # half-written files of a killed run
        s = int(leftover.name[1:6]) if leftover.name[1:6].isdigit() else rank
        if s % world_size == rank and not shard_done(out, s):  # only this rank writes these shards
            leftover.unlink(missing_ok=True)
    publish = (lambda s: _push_shard(out, remote, s)) if remote else None
    if streamed:
        plan = _stream_shards(streamed, encoder, out, dtype, text, batch_size, shard_size, workers, rank,
                              world_size, progress, publish)
    else:
        plan = EmbedPlan(collection, shard_size, world_size, rank)
        todo = [s for s in plan.my_shards() if not shard_done(out, s)]
        _run_shards(plan, todo, encoder, out, dtype, text, batch_size, workers, progress, publish)
    if not remote:
        return finalize(out, plan)
    fetch_files(remote, out, "shards/*.done.json")  # the other ranks' shards
    manifest = finalize(out, plan)
    if manifest.get("status") == "complete":
        upload_file(out / "manifest.json", f"{remote}/manifest.json")
    return manifest


def _pull_remote_state(remote: str) -> Path:
    """A fresh local staging folder for an output URL, holding the remote run's manifest and done markers (what
    resuming needs); shards are written there and uploaded as each completes."""
    import shutil

    local = local_mirror(remote) / "staging"
    shutil.rmtree(local, ignore_errors=True)  # never trust a stale mirror: the remote folder is the truth
    local.mkdir(parents=True)
    fetch_files(remote, local, "manifest.json")
    fetch_files(remote, local, LEDGER)
    fetch_files(remote, local, "shards/*.done.json")
    return local


def _push_shard(out: Path, remote: str, s: int) -> None:
    """Upload a finished shard's files, its ``.done.json`` marker last (a reader trusts a shard by its marker);
    the ledger of a streamed run first (a done shard's item numbers must be known to a rerun)."""
    if (out / LEDGER).is_file():
        upload_file(out / LEDGER, f"{remote}/{LEDGER}")
    for suffix in (".npy", ".text.npy", ".jsonl", ".done.json"):
        path = out / "shards" / f"{s:05d}{suffix}"
        if path.is_file():
            upload_file(path, f"{remote}/shards/{path.name}")


def _run_shards(plan: EmbedPlan, todo: list[int], encoder: Encoder, out: Path, dtype: str, text: bool,
                batch_size: int, workers: int, progress: bool, publish=None) -> None:
    if not todo:
        return
    batches = [list(r[i:i + batch_size]) for s in todo for r in [plan.shard_range(s)]
               for i in range(0, len(r), batch_size)]
    loader = torch.utils.data.DataLoader(_Decoded(plan.collection, encoder.preprocess), batch_sampler=batches,
                                         num_workers=workers, collate_fn=_collate)
    total = sum(len(plan.shard_range(s)) for s in todo)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="embed", dynamic_ncols=True)
    pending = iter(todo)
    shard = next(pending)
    end = plan.shard_range(shard).stop
    vectors, rows, skipped = [], [], []
    for pixels, kept, bad in loader:
        if pixels is not None:
            vectors.append(encoder.encode_images(pixels))  # (B, D)
            rows += kept
        skipped += bad
        if bar is not None:
            bar.update(len(kept) + len(bad))
        last = max([k[0] for k in kept] + [b[0] for b in bad])
        if last == end - 1:
            _write_shard(plan.collection, encoder, out, shard, vectors, rows, skipped, dtype, text)
            if publish is not None:
                publish(shard)
            vectors, rows, skipped = [], [], []
            shard = next(pending, None)
            end = plan.shard_range(shard).stop if shard is not None else -1
    if bar is not None:
        bar.close()


# ------------------------------------------------------------------------------------------------ streamed
LEDGER = "inputs.json"  # a streamed run's input shards, in order: item count, key hash, skipped entries
DOWNLOAD_AHEAD = 2  # input shards downloaded ahead of the one being embedded (each a local temporary file)


def streamed_shards(src) -> list[str] | None:
    """The input shards of ``src`` when they are tar shards outside the local disk (URLs, ``pipe:``), which
    ``embed`` reads in one streaming pass; None for every other source (indexed, read by random access)."""
    from openeva.data.labelled import detect_format
    from openeva.data.webdataset import shard_paths

    text = str(src)
    if is_local(text) and "{" not in text and ";" not in text:
        return None
    try:
        if detect_format(text) != "wds":
            return None
    except (FileNotFoundError, ValueError):
        return None  # open_collection says what is wrong with it
    shards = shard_paths(text)
    return shards if any(not is_local(s) for s in shards) else None


def _names_fingerprint(shards: list[str]) -> str:
    import hashlib

    h = hashlib.sha256(b"wds-stream")
    for shard in shards:
        h.update(source_name(shard).encode("utf-8") + b"\0")
    return h.hexdigest()


def read_ledger(out: Path) -> list[dict]:
    try:
        return list(json.loads((out / LEDGER).read_text())["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write_ledger(out: Path, entries: list[dict]) -> None:
    """Write the ledger unless another rank already wrote a longer one that agrees (ranks learn the same
    counts; keeping the longest only saves a rerun downloads)."""
    old = read_ledger(out)
    if len(old) >= len(entries) and old[:len(entries)] == entries:
        return
    atomic_write_json(out / LEDGER, {"shards": entries})


@dataclass
class _StreamPlan:
    """What :func:`finalize` reads of a streamed run: its size, known once every input shard was counted."""

    total: int
    shard_size: int
    skipped: list[str]

    @property
    def num_shards(self) -> int:
        return math.ceil(self.total / self.shard_size)

    @property
    def collection(self):
        return self  # finalize reads plan.collection.skipped


class _Items:
    """Metadata of the items in flight, by collection index (what :func:`_write_shard` reads of a collection)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, str, str | None, dict]] = {}

    def key(self, g: int) -> str:
        return self.rows[g][0]

    def path(self, g: int) -> str:
        return self.rows[g][1]

    def caption(self, g: int) -> str | None:
        return self.rows[g][2]

    def source(self, g: int) -> dict:
        return self.rows[g][3]

    def extra(self, g: int) -> dict:
        return {}  # tar samples bring no index columns


class _LocalMembers(torch.utils.data.Dataset):
    """(g, local tar, offset, size) -> (tensor or None, g, width, height, error), read from a downloaded shard
    in the DataLoader workers (which open no store session: only the main process talks to the store)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __getitem__(self, item):
        g, path, offset, size = item
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                image = open_rgb(f.read(size))
        except DECODE_ERRORS as err:
            return None, g, 0, 0, f"{type(err).__name__}: {err}"
        return self.preprocess(image), g, image.width, image.height, None


def _index_downloaded(shard: str, local: Path) -> tuple[list[tuple], dict]:
    """The items of a downloaded shard ``(key, path, caption, member)`` and its ledger entry."""
    import hashlib

    from openeva.data.webdataset import image_member, index_shard

    try:
        index = index_shard(str(local))
    except ValueError as err:
        raise ValueError(f"cannot read webdataset shard {shard}: {err.__cause__ or err}") from err
    name, items, skipped = source_name(shard), [], []
    for key, files in index.items():
        img = image_member(files)
        if img is None:
            skipped.append(f"{shard}/{key}: no image member (keys: {sorted(files)})")
            continue
        caption = clean_caption(files["txt"].read().decode("utf-8", errors="replace")) if "txt" in files else None
        items.append((f"{name}/{key}", f"{shard}/{key}", caption or None, img))
    keys = hashlib.sha256("\0".join(k for k, _, _, _ in items).encode("utf-8")).hexdigest()
    return items, {"name": name, "count": len(items), "keys": keys, "skipped": skipped}


def _stream_shards(shards: list[str], encoder: Encoder, out: Path, dtype: str, text: bool, batch_size: int,
                   shard_size: int, workers: int, rank: int, world: int, progress: bool, publish) -> _StreamPlan:
    """Embed this rank's unfinished output shards of remote tar shards in one pass (see the module docstring)."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    ledger = read_ledger(out)
    if len(ledger) > len(shards) or any(e.get("name") != source_name(s) for e, s in zip(ledger, shards)):
        raise ValueError(f"{out / LEDGER} lists other input shards than {shards[0]}...; use another --out")
    done = {int(p.name[:5]) for p in (out / "shards").glob("*.done.json")}
    offsets = [0]
    for entry in ledger:
        offsets.append(offsets[-1] + entry["count"])

    def wanted(s: int) -> bool:
        return s % world == rank and s not in done

    def needed(i: int) -> bool:  # an input shard to read: uncounted, or holding items of a wanted shard
        if i >= len(ledger):
            return True
        start, n = offsets[i], ledger[i]["count"]
        return n > 0 and any(wanted(s) for s in range(start // shard_size, (start + n - 1) // shard_size + 1))

    order = [i for i in range(len(shards)) if needed(i)]
    for stale in out.glob(f".download-{rank}-*"):  # a killed run's downloads
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{rank}-", dir=out))
    items, files_left = _Items(), []  # files_left: (last item embedded from a downloaded shard, its file)

    def fetch(i: int) -> Path:
        local = tmp / f"{i:06d}.tar"
        download(shards[i], local)
        return local

    def batches():
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download")
        futures = {i: pool.submit(fetch, i) for i in order[:DOWNLOAD_AHEAD]}
        batch: list[tuple] = []
        try:
            for k, i in enumerate(order):
                local = futures.pop(i).result()
                for j in order[k + 1:k + 1 + DOWNLOAD_AHEAD]:
                    if j not in futures:
                        futures[j] = pool.submit(fetch, j)
                found, entry = _index_downloaded(shards[i], local)
                if i < len(ledger):
                    if any(ledger[i].get(k) != entry[k] for k in ("name", "count", "keys")):
                        raise ValueError(f"input shard {shards[i]} changed since this embedding run began (its "
                                         f"items no longer match {out / LEDGER}); embed into a new --out")
                else:
                    ledger.append(entry)
                    offsets.append(offsets[-1] + entry["count"])
                    _write_ledger(out, ledger)
                last = -1
                for j, (key, path, caption, member) in enumerate(found):
                    g = offsets[i] + j
                    s = g // shard_size
                    if not wanted(s):
                        continue
                    if batch and (g != batch[-1][0] + 1 or batch[-1][0] // shard_size != s):
                        yield batch
                        batch = []
                    items.rows[g] = (key, path, caption, {"path": path, "tar": shards[i],
                                                          "offset": member.offset, "size": member.size})
                    batch.append((g, str(local), member.offset, member.size))
                    last = g
                    if len(batch) == batch_size or (g + 1) % shard_size == 0:
                        yield batch
                        batch = []
                if last < 0:
                    local.unlink(missing_ok=True)
                else:
                    files_left.append((last, local))
            if batch:
                yield batch
        finally:
            for f in futures.values():
                f.cancel()
            pool.shutdown(wait=True)

    try:
        _embed_batches(batches(), items, encoder, out, dtype, text, workers, shard_size, progress, publish,
                       files_left)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(ledger) < len(shards):  # only when nothing at all was left to read: every count is known
        raise AssertionError("a streamed run ended without counting every input shard")
    total = offsets[-1]
    if total == 0:
        raise ValueError(f"{shards[0]}...: no images found in {len(shards)} shards")
    return _StreamPlan(total, shard_size, [x for e in ledger for x in e["skipped"]])


def _embed_batches(batches, items: _Items, encoder: Encoder, out: Path, dtype: str, text: bool, workers: int,
                   shard_size: int, progress: bool, publish, files_left: list) -> None:
    """Encode the batches (in order; one DataLoader, its workers alive for the whole run) and write each
    output shard when its last item is in, or when the stream ends (the collection's last, short shard)."""
    loader = torch.utils.data.DataLoader(_LocalMembers(encoder.preprocess), batch_sampler=batches,
                                         num_workers=workers, collate_fn=_collate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="img", desc="embed", dynamic_ncols=True)
    shard, vectors, rows, skipped = None, [], [], []

    def write() -> None:
        _write_shard(items, encoder, out, shard, vectors, rows, skipped, dtype, text)
        if publish is not None:
            publish(shard)
        for g in [g for g in items.rows if g // shard_size == shard]:
            del items.rows[g]

    for pixels, kept, bad in loader:
        first = min([k[0] for k in kept] + [b[0] for b in bad])
        if shard is not None and first // shard_size != shard:
            write()  # a shard whose end this rank does not embed (a gap), or one cut short
            vectors, rows, skipped = [], [], []
        shard = first // shard_size
        if pixels is not None:
            vectors.append(encoder.encode_images(pixels))  # (B, D)
            rows += kept
        skipped += bad
        if bar is not None:
            bar.update(len(kept) + len(bad))
        last = max([k[0] for k in kept] + [b[0] for b in bad])
        while files_left and files_left[0][0] <= last:  # every item of that download is encoded
            files_left.pop(0)[1].unlink(missing_ok=True)
        if (last + 1) % shard_size == 0:
            write()
            shard, vectors, rows, skipped = None, [], [], []
    if shard is not None:
        write()
    if bar is not None:
        bar.close()


def _write_shard(coll: ImageCollection, encoder: Encoder, out: Path, s: int, vectors, rows, skipped,
                 dtype: str, text: bool) -> None:
    base = out / "shards" / f"{s:05d}"
    dim = encoder.dim
    image_vecs = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)  # (n, D)
    atomic_write_bytes(base.with_suffix(".npy"), _npy_bytes(image_vecs.astype(dtype)))
    if text:
        captions = [coll.caption(i) for i, _, _ in rows]
        text_vecs = np.zeros((len(rows), dim), np.float32)  # (n, D), zero where no caption
        have = [j for j, c in enumerate(captions) if c]
        for start in range(0, len(have), 256):
            chunk = have[start:start + 256]
            text_vecs[chunk] = encoder.encode_texts([captions[j] for j in chunk])
        atomic_write_bytes(out / "shards" / f"{s:05d}.text.npy", _npy_bytes(text_vecs.astype(dtype)))
    lines = [json.dumps({**coll.extra(i), "id": coll.key(i), "path": coll.path(i), "caption": coll.caption(i),
                         "width": w, "height": h, "source": coll.source(i)}) for i, w, h in rows]
    atomic_write_bytes(base.with_suffix(".jsonl"), ("\n".join(lines) + ("\n" if lines else "")).encode())
    skipped_list = [{"id": coll.key(i), "path": coll.path(i), "error": err} for i, err in skipped]
    atomic_write_json(out / "shards" / f"{s:05d}.done.json", {"count": len(rows), "skipped": skipped_list})


def finalize(out: Path, plan: EmbedPlan) -> dict:
    """Write the final manifest once every shard (of every rank) is done; returns the manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    done = [s for s in range(plan.num_shards) if shard_done(out, s)]
    if len(done) < plan.num_shards:
        manifest.update(status="partial", shards_done=len(done), num_shards=plan.num_shards)
        return manifest
    count, skipped = 0, []
    for s in done:
        info = json.loads((out / "shards" / f"{s:05d}.done.json").read_text())
        count += info["count"]
        skipped += info["skipped"]
    if manifest.get("total") is None:  # a streamed run learns its total as it goes
        manifest["total"] = plan.total
    manifest.update(status="complete", count=count, num_shards=plan.num_shards, skipped_count=len(skipped),
                    skipped=skipped, source_skipped=plan.collection.skipped)
    if manifest != json.loads((out / "manifest.json").read_text()):
        atomic_write_json(out / "manifest.json", manifest)
    return manifest


def load_embeddings(out, text: bool = False) -> tuple[np.ndarray, list[dict], dict]:
    """(vectors (N, D) float32, metadata rows, manifest) of a complete embedding folder, in collection order.

    An embedding folder at a URL is copied to a local mirror first (an index memory-maps local files)."""
    out = fetch_embeddings(out)
    if not (out / "manifest.json").is_file():
        raise FileNotFoundError(f"{out} is not an embedding folder (no manifest.json); run `openeva embed` first")
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("status") != "complete":
        raise ValueError(f"embedding run in {out} is not complete ({manifest.get('status')}); rerun `openeva embed` "
                         "with the same arguments to finish it")
    if text and not manifest.get("text"):
        raise ValueError(f"{out} has no caption vectors (embed with --text)")
    arrays, meta = [], []
    for s in range(manifest["num_shards"]):
        base = out / "shards" / f"{s:05d}"
        arrays.append(np.load(f"{base}.text.npy" if text else f"{base}.npy").astype(np.float32))
        meta += [json.loads(line) for line in base.with_suffix(".jsonl").read_text().splitlines() if line]
    vectors = np.concatenate(arrays) if arrays else np.zeros((0, manifest["dim"]), np.float32)
    return vectors, meta, manifest
