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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from openeva.data.collection import DECODE_ERRORS, ImageCollection, open_collection
from openeva.data.sources import fetch_files, is_local, local_mirror, upload_file
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
    collection = open_collection(src, image_key=image_key, caption_key=caption_key)
    if encoder is None:
        if model is None:
            raise ValueError("embed needs a model name (or an encoder)")
        encoder = load_encoder(model, pretrained, precision=resumed_precision(out) or "auto")
    identity = {**encoder.info, "dtype": dtype, "text": bool(text), "shard_size": shard_size,
                "collection": collection.fingerprint(), "format_version": FORMAT_VERSION}
    _check_identity(out, identity)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    if not (out / "manifest.json").is_file():
        atomic_write_json(out / "manifest.json", {**identity, "source": str(src), "status": "running",
                                                   "count": None, "total": len(collection)})
        if remote:
            upload_file(out / "manifest.json", f"{remote}/manifest.json")
    plan = EmbedPlan(collection, shard_size, world_size, rank)
    todo = [s for s in plan.my_shards() if not shard_done(out, s)]
    for s in todo:  # half-written files of a killed run (only this rank writes these shards)
        for leftover in (out / "shards").glob(f".{s:05d}.*.tmp-*"):
            leftover.unlink(missing_ok=True)
    publish = (lambda s: _push_shard(out, remote, s)) if remote else None
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
    fetch_files(remote, local, "shards/*.done.json")
    return local


def _push_shard(out: Path, remote: str, s: int) -> None:
    """Upload a finished shard's files, its ``.done.json`` marker last (a reader trusts a shard by its marker)."""
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
    lines = [json.dumps({"id": coll.key(i), "path": coll.path(i), "caption": coll.caption(i), "width": w,
                         "height": h, "source": coll.source(i)}) for i, w, h in rows]
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


def fetch_embeddings(out) -> Path:
    """The local folder of an embedding output: ``out`` itself, or for a URL a fresh local copy of it."""
    if is_local(str(out)):
        return Path(out).expanduser()
    import shutil

    remote = str(out).rstrip("/")
    local = local_mirror(remote) / "copy"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    if not fetch_files(remote, local, "manifest.json"):
        raise FileNotFoundError(f"{remote} is not an embedding folder (no manifest.json); run `openeva embed` first")
    fetch_files(remote, local, "shards/*")
    return local
