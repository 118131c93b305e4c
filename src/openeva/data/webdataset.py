"""Tar shards in the webdataset / img2dataset layout, read with Python's ``tarfile`` (no extra dependency).

A shard holds samples as consecutive files sharing a key: ``KEY.jpg`` (or png/webp), ``KEY.txt`` caption,
optional ``KEY.json`` metadata and ``KEY.cls`` class label. Shards are local files or URLs in the one source
grammar (:mod:`openeva.data.sources`: fsspec URLs, ``pipe:`` commands, braces) and are read as streams.

:class:`TarShardDataset` is an ``IterableDataset`` that splits the work across DDP ranks and DataLoader workers
("consumers", ``rank * num_workers + worker``) by :func:`split_shards`, so each sample is read exactly once
per epoch:

* at least as many shards as consumers: consumer ``c`` of ``n`` reads shards ``c, c + n, ...``. When the
  count does not divide, some consumers get one shard more; their rank's stream is longer, and the training
  loader (:mod:`openeva.train.data`) ends the epoch of a short rank with empty batches, never re-reading;
* fewer shards than consumers: every consumer streams all shards and keeps sample ``k`` (counting across
  shards in order) when ``k % n == c``: exact, but every consumer reads every byte. Said in the log at start;
* ``resampled=True`` (open_clip's ``--dataset-resampled``): each consumer draws shards with replacement, an
  endless stream whose epochs are cut by the number of samples per epoch. Said in the log at start.

The order is a function of ``(seed, epoch)``: optional shard shuffle (same permutation on every rank) and an
optional per-consumer shuffle buffer. The epoch lives in shared memory (:class:`~openeva.data.loader.SharedInt`)
so that :meth:`TarShardDataset.set_epoch` reaches persistent DataLoader workers. Bad samples yield ``None``
and are counted (see :mod:`openeva.data.loader`). A read error on a remote shard (connection reset, 5xx, a
stream cut short) is retried with backoff, resuming after the last sample read; a shard that still fails, or
any unreadable local shard, is named in the log and counted in ``skipped["corrupt_shard"]`` (and listed in
``failed_shards``; :meth:`TarShardDataset.take_failed_shards` also gets the names from DataLoader worker
processes, for the training metrics); the samples read before the damage are kept and the epoch goes on. A
consumer downloads its next remote shard while it decodes the current one (``prefetch``). A shard truncated
exactly at a file boundary reads as a shorter shard, as tar cannot tell.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import multiprocessing
import queue
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from openeva.data.captions import clean_caption
from openeva.data.images import IMAGE_EXTENSIONS, open_rgb, prepare_sample
from openeva.data.loader import SharedInt, derive_seed, record_skip, seeded_rng
from openeva.data.sources import (
    PrefetchedSource, RetryPolicy, expand_sources, is_local, is_transient, list_files, open_source, read_range,
    source_exists, source_kind,
)

logger = logging.getLogger(__name__)
# tar member extensions that hold an image, in order of preference
IMAGE_EXTS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError)
INLINE_MAX = 1 << 16  # non-image members up to this size are kept in memory by index_shard (captions, labels)

RawSample = tuple[str, dict[str, bytes]]  # (key, files); files is None for a sample passed over unread
READ, PASS, DROP = 1, 2, 0  # what a shard reader does with a sample (TarShardDataset._read_shard)
_DROPPED: dict = {}  # marks a dropped sample in _group_samples (compared by identity)


def expand_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand ``"a-{000..009}.tar;b-{x,y}.tar"`` into shard sources (the grammar of :mod:`openeva.data.sources`).

    ``{000..009}`` is a numeric range keeping the zero padding of its first number, ``{x,y}`` a list, ``;``
    (or ``::`` between plain paths) joins patterns; braces may repeat and nest left to right."""
    return expand_sources(urls)


def shard_paths(source: str | Path | Sequence[str | Path]) -> list[str]:
    """The shard sources of ``source``: a pattern (:func:`expand_urls`), a folder (or URL prefix) of ``.tar``
    files, or one ``.tar``.

    Raises FileNotFoundError naming the missing shards (or the empty folder) before anything is read. Local
    shards are all checked; of remote ones the first and last (checking thousands of objects costs minutes)."""
    if isinstance(source, (str, Path)) and "{" not in str(source) and ";" not in str(source) \
            and source_kind(source) == "dir":
        shards = list_files(source, ".tar")
        if not shards:
            raise FileNotFoundError(f"no .tar shards found in folder {source}")
        return shards
    shards = expand_urls(source)
    if not shards:
        raise ValueError(f"no shards given: {source!r}")
    local = [s for s in shards if is_local(s)]
    remote = [s for s in shards if not is_local(s)]
    checked = local + ([remote[0], remote[-1]] if len(remote) > 1 else remote)
    missing = [s for s in dict.fromkeys(checked) if not source_exists(s)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shard files not found: {shown}")
    return shards


def split_shards(num_shards: int, consumer: int, num_consumers: int) -> tuple[list[int], int, int]:
    """Consumer ``consumer`` of ``num_consumers``'s part of one epoch: ``(shard positions, stride, offset)``.

    It reads the shards at those positions of the epoch's order and keeps the samples ``k`` (counted over
    what it reads) with ``k % stride == offset``. Over all consumers every sample is taken exactly once."""
    if not 0 <= consumer < num_consumers:
        raise ValueError(f"consumer must be in [0, {num_consumers}), got {consumer}")
    if num_shards >= num_consumers:
        return list(range(consumer, num_shards, num_consumers)), 1, 0
    return list(range(num_shards)), num_consumers, consumer


def sample_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename; extension = the rest (lower case)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def iter_tar_members(shard: str | Path, stream: Any = None) -> Iterator[tuple[str, str, tarfile.TarInfo,
                                                                             tarfile.TarFile]]:
    """``(sample key, extension, member, open tar)`` for each file of a shard, in tar order (members without an
    extension are left out). The shard is read as a stream (no seeks: a URL or a ``pipe:`` works), so a
    member's bytes must be read (``tar.extractfile``) before the next one. Raises :data:`SHARD_ERRORS` on an
    unreadable shard, after the members before it. ``stream``: the shard already opened (a prefetching
    reader), closed here."""
    with (stream or open_source(shard)) as opened, tarfile.open(fileobj=opened, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = sample_key(member.name)
            if ext:
                yield key, ext, member, tar


@dataclass(frozen=True)
class TarMember:
    """Where a file's bytes sit inside an uncompressed tar, to read them later without extracting.

    ``data`` holds the bytes of small members read while indexing (captions, labels), so that reading them
    from a remote shard costs no request."""

    tar_path: str
    offset: int  # byte offset of the member's data inside the tar
    size: int
    name: str
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return read_range(self.tar_path, self.offset, self.size)


def index_shard(shard: str) -> dict[str, dict[str, TarMember]]:
    """Sample key -> {extension: TarMember} of one shard (one streamed read; small non-image members are kept
    in memory). ValueError naming an unreadable shard."""
    groups: dict[str, dict[str, TarMember]] = {}
    try:
        for key, ext, member, tar in iter_tar_members(shard):
            data = None
            if ext not in IMAGE_EXTS and member.size <= INLINE_MAX:
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
            groups.setdefault(key, {})[ext] = TarMember(str(shard), member.offset_data, member.size, member.name,
                                                        data)
    except SHARD_ERRORS as err:
        raise ValueError(f"cannot read webdataset shard {shard}: {err}") from err
    return groups


INDEX_THREADS = 8  # remote shards indexed at once (each a streamed download; local shards are read in turn)


def index_shards(shards: Sequence[str]) -> Iterator[tuple[str, dict[str, dict[str, TarMember]]]]:
    """``(shard, index_shard(shard))`` for each shard, in order; remote shards are downloaded
    :data:`INDEX_THREADS` at a time, as a request's latency, not the bytes, bounds one stream."""
    if all(is_local(s) for s in shards) or len(shards) < 2:
        yield from ((s, index_shard(s)) for s in shards)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(INDEX_THREADS, len(shards)), thread_name_prefix="index") as pool:
        yield from zip(shards, pool.map(index_shard, shards))


def image_member(files: dict[str, Any]) -> Any | None:
    """The image of a sample's ``{extension: value}`` files (first of :data:`IMAGE_EXTS`), or None."""
    return next((files[e] for e in IMAGE_EXTS if e in files), None)


class TarShardDataset(IterableDataset):
    """Iterate ``(image, caption)`` (``target="txt"``) or ``(image, class_index)`` (``target="cls"``).

    ``transform`` maps the PIL image; ``tokenizer`` maps ``[caption]`` to a token row. ``rank`` /
    ``world_size`` default to torch.distributed's when initialized, else a single process. ``resampled``
    draws shards with replacement (endless; see the module docstring). ``retry`` sets how remote read errors
    are retried. ``prefetch`` downloads a consumer's next remote shard (up to
    :data:`~openeva.data.sources.PREFETCH_BYTES`) while the current one is decoded. :meth:`set_epoch` reaches
    persistent DataLoader workers.
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        target: str = "txt",
        image_exts: Sequence[str] = IMAGE_EXTS,
        shuffle_shards: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        resampled: bool = False,
        retry: RetryPolicy = RetryPolicy(),
        prefetch: bool = True,
    ) -> None:
        self.shards = shard_paths(urls)
        if target not in ("txt", "cls", "none"):
            raise ValueError(f"target must be 'txt' (captions), 'cls' (class labels) or 'none' (images only, "
                             f"as MIM reads them), got {target!r}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.transform = transform
        self.tokenizer = tokenizer
        self.target = target
        self.image_exts = tuple(e.lower().lstrip(".") for e in image_exts)
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.resampled = bool(resampled)
        self.retry = retry
        self.prefetch = bool(prefetch)
        self._epoch, self._start, self._batch_size = SharedInt(), SharedInt(), SharedInt()
        self.skipped: Counter = Counter()
        self.failed_shards: list[str] = []  # failed in this process
        self._failed_queue = multiprocessing.Queue()  # failed in DataLoader workers (made here: they inherit it)
        self._failed_taken = 0

    def take_failed_shards(self) -> list[str]:
        """The shards that failed since the last call, in this process or in DataLoader workers (their names
        arrive through a queue, a moment after the failure)."""
        names = self.failed_shards[self._failed_taken:]
        self._failed_taken = len(self.failed_shards)
        while True:
            try:
                names.append(self._failed_queue.get_nowait())
            except queue.Empty:
                return names

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        self._start.set(0)

    def set_position(self, epoch: int, start_batch: int, batch_size: int) -> None:
        """Resume epoch ``epoch`` at batch ``start_batch`` of a DataLoader with this ``batch_size``.

        The DataLoader takes batches from its workers in turn, so batch ``k`` came from worker ``k % W``; a
        resumed iteration starts at worker 0, which therefore plays consumer ``(0 + start) % W`` and so on,
        each passing over the samples of its batches before ``start`` without decoding them. Without a shuffle
        buffer their tar members are not read into memory (the stream steps over them); with one, the buffer is
        refilled from the start of the epoch, their bytes passing through it as in the uninterrupted run, so
        the resumed order is that run's. Exact while every worker still had samples at ``start``."""
        if start_batch < 0 or batch_size < 1:
            raise ValueError(f"start_batch must be >= 0 and batch_size >= 1, got {start_batch}, {batch_size}")
        self._epoch.set(epoch)
        self._start.set(start_batch)
        self._batch_size.set(batch_size)

    def _distributed(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def describe_split(self, num_workers: int) -> str:
        """One line for the log at start: how this epoch's shards reach the ranks x workers."""
        _, world_size = self._distributed()
        n, s = world_size * max(1, num_workers), len(self.shards)
        where = f"{s} shards over {world_size} ranks x {max(1, num_workers)} workers"
        if self.resampled:
            return f"{where}: resampled (shards drawn with replacement per consumer; epochs cut by sample count)"
        if s < n:
            return (f"{where}: exactly once, each consumer streams all {s} shards and keeps 1 sample in {n} "
                    "(every byte read by every consumer; give more shards or data.resampled=true)")
        if s % n:
            return (f"{where}: exactly once, {s % n} consumers read one shard more; a rank that runs short ends "
                    "its epoch with empty batches (shard count divisible by consumers, or data.resampled=true, "
                    "avoids it)")
        return f"{where}: exactly once, {s // n} shards per consumer"

    def shard_order(self) -> list[str]:
        """Shards in this epoch's order (identical on every rank and worker)."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[Any, Any] | None]:
        rank, world_size = self._distributed()
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self._start.get()
        role = (worker_id + start) % num_workers  # the worker whose batch comes next (set_position)
        batches_before = -(-(start - role) // num_workers) if start > role else 0  # its batches j < start
        return self.iter_consumer(rank * num_workers + role, world_size * num_workers,
                                  skip=batches_before * self._batch_size.get())

    def iter_consumer(self, consumer: int, num_consumers: int, skip: int = 0) -> Iterator[tuple[Any, Any] | None]:
        """The samples of consumer ``consumer`` of ``num_consumers`` (rank * num_workers + worker id), after
        passing over the first ``skip`` undecoded (without a shuffle buffer their tar members are not even
        read into memory: the stream steps over them)."""
        epoch = self.epoch
        raw = self.raw_stream(consumer, num_consumers, pass_over=skip if self.shuffle_buffer <= 1 else 0)
        for index, (key, files) in enumerate(raw):
            if index >= skip:
                yield self.decode_at(key, files, consumer, index, epoch)

    def raw_stream(self, consumer: int, num_consumers: int, pass_over: int = 0) -> Iterator[RawSample]:
        """Consumer ``consumer``'s undecoded samples ``(key, {extension: bytes})`` in this epoch's order (after
        the shuffle buffer, if any). The first ``pass_over`` are ``(key, None)``: counted, their bytes never
        read (only for a stream without a shuffle buffer, whose order does not depend on them)."""
        if not 0 <= consumer < num_consumers:
            raise ValueError(f"consumer must be in [0, {num_consumers}), got {consumer}")
        if pass_over and self.shuffle_buffer > 1:
            raise ValueError("pass_over needs shuffle_buffer <= 1: a shuffle buffer holds the bytes it passes on")
        raw = self._raw_samples(consumer, num_consumers, pass_over)
        if self.shuffle_buffer > 1:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + consumer)
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        return raw

    def decode_at(self, key: str, files: dict[str, bytes], consumer: int, index: int,
                  epoch: int | None = None) -> tuple[Any, Any] | None:
        """Decode sample ``index`` of consumer ``consumer``'s raw stream. Its augmentation is a function of
        ``(seed, epoch, consumer, index)``, as map-style sources get from the training loader: the same in any
        worker process, in a mix, and on resume."""
        with seeded_rng(derive_seed(self.seed, self.epoch if epoch is None else epoch, consumer, index)):
            return self._decode(key, files)

    def _raw_samples(self, consumer: int, num_consumers: int, pass_over: int = 0) -> Iterator[RawSample]:
        kept = itertools.count(1)  # samples of this consumer so far; the first pass_over are not read

        def take(_: str) -> int:
            return PASS if next(kept) <= pass_over else READ

        if self.resampled:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + consumer)
            while True:
                yield from self._read_shard(rng.choice(self.shards), take)
        order = self.shard_order()
        positions, stride, offset = split_shards(len(order), consumer, num_consumers)
        counter = itertools.count()  # samples seen so far across this consumer's shards, in order
        keep = take if stride == 1 else (lambda key: take(key) if next(counter) % stride == offset else DROP)
        ahead = None  # the next remote shard, downloading while this one is decoded
        try:
            for i, p in enumerate(positions):
                stream, ahead = (ahead, None) if ahead is not None and ahead.source == order[p] else (None, ahead)
                if i + 1 < len(positions) and not is_local(order[positions[i + 1]]) and self.prefetch:
                    ahead = PrefetchedSource(order[positions[i + 1]])
                yield from self._read_shard(order[p], keep, stream)
        finally:
            if ahead is not None:
                ahead.close()

    def _read_shard(self, shard: str, keep: Callable[[str], int], stream: Any = None) -> Iterator[RawSample]:
        """Samples of one shard by what ``keep(key)`` says (asked once per key, in order): :data:`READ` (yield
        its bytes), :data:`PASS` (yield ``(key, None)``, its bytes not read) or :data:`DROP` (leave it out).

        A remote read error is retried from the start of the stream, passing over the samples already
        seen without asking ``keep`` again; when the retries are spent (or at once for a local file) the
        shard's remaining samples are skipped and the shard is counted and named."""
        seen = 0  # samples whose fate is decided (yielded or left out)
        for attempt in itertools.count():
            try:
                for key, files in _group_samples(shard, keep, skip=seen, stream=stream if attempt == 0 else None):
                    seen += 1
                    if files is not _DROPPED:
                        yield key, files
                return
            except Exception as err:  # noqa: BLE001 - a store's own error types too (aiohttp, botocore)
                remote = not is_local(shard)
                if remote and attempt < self.retry.retries and (is_transient(err) or isinstance(
                        err, tarfile.TarError)):
                    logger.warning("shard %s: %s: %s after %d samples; retry %d of %d", shard,
                                   type(err).__name__, err, seen, attempt + 1, self.retry.retries)
                    self.retry.wait(attempt)
                    continue
                self.failed_shards.append(shard)
                if get_worker_info() is not None:  # to the main process (openeva.data.loader.take_failed_shards)
                    self._failed_queue.put(shard)
                record_skip(self.skipped, "corrupt_shard", f"{shard}: {type(err).__name__}: {err} (after {seen} "
                                                           "samples; the rest of the shard is skipped)")
                logger.error("shard %s failed (%s); skipped, %d failed shard(s) in this process so far", shard,
                             err, len(self.failed_shards))
                return

    def _decode(self, key: str, files: dict[str, bytes]) -> tuple[Any, Any] | None:
        image_bytes = next((files[e] for e in self.image_exts if e in files), None)  # this dataset's preference
        if image_bytes is None:
            record_skip(self.skipped, "missing_image", f"{key}: files {sorted(files)}")
            return None
        if self.target == "none":
            label: Any = ""
        elif self.target == "txt":
            if "txt" not in files:
                record_skip(self.skipped, "missing_caption", key)
                return None
            text = clean_caption(files["txt"].decode("utf-8", errors="replace"))
            if not text:
                record_skip(self.skipped, "empty_caption", key)
                return None
            label = self.tokenizer([text])[0] if self.tokenizer is not None else text
        else:
            try:
                label = int(files["cls"].decode("utf-8").strip())
            except KeyError:
                record_skip(self.skipped, "missing_label", key)
                return None
            except ValueError:
                record_skip(self.skipped, "bad_label", f"{key}: {files['cls'][:20]!r}")
                return None
        image = prepare_sample(partial(open_rgb, image_bytes), self.transform, self.skipped, key)
        return None if image is None else (image, label)

    def count_samples(self) -> int:
        """Number of sample keys in all shards (reads tar headers only; streams every byte of remote shards)."""
        return sum(_count_keys(shard) for shard in self.shards)


def _group_samples(shard: str, keep: Callable[[str], int], skip: int = 0,
                   stream: Any = None) -> Iterator[tuple[str, Any]]:
    """``(key, {extension: bytes})`` per sample of a shard ``keep`` reads, ``(key, None)`` per one it passes over,
    ``(key, _DROPPED)`` per one it drops (neither's members are read: the tar stream steps over them).

    The first ``skip`` samples are passed over unread and unasked (a stream resumed after a read error)."""
    key, files, wanted, index = None, {}, DROP, -1

    def result():
        return key, files if wanted == READ else None if wanted == PASS else _DROPPED

    for member_key, ext, member, tar in iter_tar_members(shard, stream):
        if member_key != key:
            if key is not None and index >= skip:
                yield result()
            index += 1
            key, files = member_key, {}
            wanted = keep(member_key) if index >= skip else DROP
        if wanted == READ:
            handle = tar.extractfile(member)
            files[ext] = handle.read() if handle is not None else b""
    if key is not None and index >= skip:
        yield result()


def _count_keys(shard: str) -> int:
    count, last = 0, None
    try:
        for key, _, _, _ in iter_tar_members(shard):
            if key != last:
                count, last = count + 1, key
    except SHARD_ERRORS:
        pass
    return count


def _buffer_shuffle(items: Iterable[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """Approximate shuffle with a fixed-size buffer (webdataset's ``shuffle``), deterministic given rng."""
    buffer: list[RawSample] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def _encode_value(ext: str, value: Any, image_format: str) -> tuple[str, bytes]:
    if isinstance(value, Image.Image):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}.get(image_format.lower())
        if fmt is None:
            raise ValueError(f"image_format must be jpg, jpeg, png or webp, got {image_format!r}")
        out = io.BytesIO()
        value.convert("RGB").save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return image_format.lower(), out.getvalue()
    if isinstance(value, bytes):
        return ext, value
    if isinstance(value, (dict, list)):
        return ext, json.dumps(value).encode("utf-8")
    if isinstance(value, (str, int)):
        return ext, str(value).encode("utf-8")
    raise ValueError(f"cannot write a {type(value).__name__} as '.{ext}' in a shard")


def write_shards(
    samples: Iterable[Any],
    out_dir: str | Path,
    shard_size: int = 1000,
    prefix: str = "shard",
    image_format: str = "jpg",
) -> list[Path]:
    """Write samples to ``out_dir/{prefix}-000000.tar, ...`` with ``shard_size`` samples each.

    A sample is ``(image, caption)`` or a dict of extension -> value, e.g. ``{"image": pil, "txt": "...",
    "json": {...}, "cls": 3}``. PIL images (under any key) are encoded as ``image_format``; bytes are
    written as given (e.g. ``{"jpg": raw_bytes}``); str/int as UTF-8 text; dict/list as JSON. Keys are
    the running sample index (``"000000042"``) unless the dict has ``"__key__"``. Returns shard paths.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None
    try:
        for index, sample in enumerate(samples):
            if index % shard_size == 0:
                if tar is not None:
                    tar.close()
                paths.append(out / f"{prefix}-{len(paths):06d}.tar")
                tar = tarfile.open(paths[-1], "w")
            if isinstance(sample, dict):
                fields = dict(sample)
                key = str(fields.pop("__key__", f"{index:09d}"))
            elif isinstance(sample, (tuple, list)) and len(sample) == 2:
                fields, key = {"image": sample[0], "txt": sample[1]}, f"{index:09d}"
            else:
                raise ValueError(f"sample {index} must be an (image, caption) pair or a dict, got {type(sample)}")
            for ext, value in fields.items():
                name_ext, data = _encode_value(ext, value, image_format)
                info = tarfile.TarInfo(f"{key}.{name_ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))  # type: ignore[union-attr]
    finally:
        if tar is not None:
            tar.close()
    return paths
