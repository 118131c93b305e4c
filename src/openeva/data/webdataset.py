"""Tar shards in the webdataset / img2dataset layout, read with Python's ``tarfile`` (no extra dependency).

A shard holds samples as consecutive files sharing a key: ``KEY.jpg`` (or png/webp), ``KEY.txt`` caption,
optional ``KEY.json`` metadata and ``KEY.cls`` class label. :class:`TarShardDataset` is an
``IterableDataset`` that splits the work across DDP ranks and DataLoader workers ("consumers"):

* at least as many shards as consumers: consumer ``c`` of ``n`` reads shards ``c, c + n, ...``;
* fewer shards than consumers (the case that makes other loaders hang or duplicate data): every consumer
  scans all shards and keeps sample ``k`` (counting across shards in order) when ``k % n == c``.

Either way each sample is read exactly once per epoch. Ranks may get different sample counts when shards
differ in size; cap the steps per epoch in the engine for DDP. The order is a function of
``(seed, epoch)``: optional shard shuffle (same permutation on every rank) and an optional per-consumer
shuffle buffer. Bad samples yield ``None`` and are counted (see :mod:`openeva.data.loader`); an
unreadable shard is logged and counted in ``skipped["corrupt_shard"]`` (samples read before the damage
are kept; a shard truncated exactly at a file boundary reads as a shorter shard, as tar cannot tell).
"""

from __future__ import annotations

import io
import json
import random
import re
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
from openeva.data.loader import record_skip

# tar member extensions that hold an image, in order of preference
IMAGE_EXTS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")

RawSample = tuple[str, dict[str, bytes]]


def expand_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand ``"a-{000..009}.tar::b-{x,y}.tar"`` style patterns into paths: the one shard grammar.

    ``{000..009}`` is a numeric range keeping the zero padding of its first number, ``{x,y}`` a list, ``::``
    joins patterns; braces may repeat and nest left to right."""
    if isinstance(urls, (str, Path)):
        patterns = str(urls).split("::")
    else:
        patterns = [str(u) for u in urls]
    out: list[str] = []
    for pattern in patterns:
        out.extend(_expand_braces(pattern))
    return out


def _expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = _RANGE.match(body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise ValueError(f"empty brace range {{{body}}} in shard pattern {pattern!r}")
        width = len(first)
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


def shard_paths(source: str | Path | Sequence[str | Path]) -> list[str]:
    """The shard files of a source: a pattern (:func:`expand_urls`), a folder of ``.tar`` files, or one ``.tar``.

    Raises FileNotFoundError naming the missing shards (or the empty folder) before anything is read."""
    if isinstance(source, (str, Path)) and "{" not in str(source) and Path(source).is_dir():
        shards = sorted(str(s) for s in Path(source).glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no .tar shards found in folder {source}")
        return shards
    shards = expand_urls(source)
    if not shards:
        raise ValueError(f"no shards given: {source!r}")
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shard files not found: {shown}")
    return shards


def sample_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename; extension = the rest (lower case)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def iter_tar_members(shard: str | Path) -> Iterator[tuple[str, str, tarfile.TarInfo, tarfile.TarFile]]:
    """``(sample key, extension, member, open tar)`` for each file of a shard, in tar order (members without an
    extension are left out). Raises :data:`SHARD_ERRORS` on an unreadable shard, after the members before it."""
    with tarfile.open(shard, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = sample_key(member.name)
            if ext:
                yield key, ext, member, tar


@dataclass(frozen=True)
class TarMember:
    """Where a file's bytes sit inside an uncompressed tar, to read them later without extracting."""

    tar_path: str
    offset: int  # byte offset of the member's data inside the tar
    size: int
    name: str

    def read(self) -> bytes:
        with open(self.tar_path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def index_shard(shard: str) -> dict[str, dict[str, TarMember]]:
    """Sample key -> {extension: TarMember} of one shard (headers only; ValueError naming an unreadable shard)."""
    groups: dict[str, dict[str, TarMember]] = {}
    try:
        for key, ext, member, _ in iter_tar_members(shard):
            groups.setdefault(key, {})[ext] = TarMember(str(shard), member.offset_data, member.size, member.name)
    except SHARD_ERRORS as err:
        raise ValueError(f"cannot read webdataset shard {shard}: {err}") from err
    return groups


def image_member(files: dict[str, Any]) -> Any | None:
    """The image of a sample's ``{extension: value}`` files (first of :data:`IMAGE_EXTS`), or None."""
    return next((files[e] for e in IMAGE_EXTS if e in files), None)


class TarShardDataset(IterableDataset):
    """Iterate ``(image, caption)`` (``target="txt"``) or ``(image, class_index)`` (``target="cls"``).

    ``transform`` maps the PIL image; ``tokenizer`` maps ``[caption]`` to a token row. ``rank`` /
    ``world_size`` default to torch.distributed's when initialized, else a single process.
    Call :meth:`set_epoch` before each epoch (with non-persistent DataLoader workers).
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
        self.epoch = 0
        self.skipped: Counter = Counter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _distributed(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

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
        return self.iter_consumer(rank * num_workers + worker_id, world_size * num_workers)

    def iter_consumer(self, consumer: int, num_consumers: int) -> Iterator[tuple[Any, Any] | None]:
        """The samples of consumer ``consumer`` of ``num_consumers`` (rank * num_workers + worker id)."""
        if not 0 <= consumer < num_consumers:
            raise ValueError(f"consumer must be in [0, {num_consumers}), got {consumer}")
        raw = self._raw_samples(consumer, num_consumers)
        if self.shuffle_buffer > 1:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + consumer)
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        for key, files in raw:
            yield self._decode(key, files)

    def _raw_samples(self, consumer: int, num_consumers: int) -> Iterator[RawSample]:
        order = self.shard_order()
        if len(order) >= num_consumers:
            for shard in order[consumer::num_consumers]:
                yield from self._read_shard(shard, lambda _: True)
            return
        counter = [0]  # samples seen so far across shards, in order

        def mine(_: str) -> bool:
            index = counter[0]
            counter[0] += 1
            return index % num_consumers == consumer

        for shard in order:
            yield from self._read_shard(shard, mine)

    def _read_shard(self, shard: str, keep: Callable[[str], bool]) -> Iterator[RawSample]:
        """Group consecutive tar members by key; read the bytes only of samples ``keep(key)`` accepts."""
        key, files, wanted = None, {}, False
        try:
            for member_key, ext, member, tar in iter_tar_members(shard):
                if member_key != key:
                    if key is not None and wanted:
                        yield key, files
                    key, files, wanted = member_key, {}, keep(member_key)
                if wanted:
                    handle = tar.extractfile(member)
                    files[ext] = handle.read() if handle is not None else b""
            if key is not None and wanted:
                yield key, files
        except SHARD_ERRORS as err:
            record_skip(self.skipped, "corrupt_shard", f"{shard}: {err}")

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
        """Number of sample keys in all shards (reads tar headers only)."""
        return sum(_count_keys(shard) for shard in self.shards)


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
