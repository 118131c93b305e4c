"""The one source grammar: local paths, URLs (fsspec) and ``pipe:`` commands, with braces and ``;``.

Every reader in :mod:`openeva.data` (tar shards, caption indexes, labelled sets, collections) opens what it
reads through this module, so ``data.train``, ``openeva embed``, ``openeva eval`` and ``quickstart --data``
accept the same strings:

* a local path (``~`` expanded), or a URL that fsspec opens: ``s3://``, ``gs://``, ``az://``/``abfs://``,
  ``hf://``, ``http(s)://``, ``file://``, and fsspec chains such as ``simplecache::s3://bucket/a.tar``;
* ``pipe:CMD``: the standard output of the shell command ``CMD`` (open_clip's ``pipe:aws s3 cp URL -``), for
  any store fsspec does not speak. A command that exits non-zero is a read error;
* ``{000..099}`` expands to a zero-padded numeric range, ``{a,b}`` to a list (left to right, nested);
* ``;`` separates sources. ``::`` followed by a URL (``proto://``) is fsspec's chaining and is kept as it is;
  ``::`` between plain paths is the older source separator (same as ``;``), kept for old configurations;
* ``\\`` escapes one of ``; { } , : \\``: write ``\\;`` for a ``;`` inside a URL or a ``pipe:`` command,
  ``\\{`` for a literal brace, ``\\:`` to keep a ``::`` between plain paths literal. A backslash before
  any other character is an ordinary character.

Credentials are never part of a source: each store reads its usual environment and configuration files
(``AWS_*`` / ``~/.aws`` and ``AWS_ENDPOINT_URL`` for S3-compatible stores, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``, ``HF_TOKEN``), so no secret reaches a command line, a log or a saved config.

Network faults: :func:`with_retries` retries transient errors (connection reset, timeout, HTTP 5xx) with
exponential backoff; :func:`is_transient` says which errors those are. Readers that stream (tar shards) resume
after the last good sample on a retry and, when the retries are spent, skip the rest of the shard and count it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "RetryPolicy", "expand_braces", "expand_sources", "fetch_files", "is_local", "is_transient", "list_files",
    "local_mirror", "open_source", "read_range", "source_exists", "source_is_dir", "source_name", "split_sources",
    "unescape", "upload_file", "with_retries",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)
_ESCAPABLE = frozenset(";{},:\\")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
PIPE = "pipe:"


# ------------------------------------------------------------------------------------------------ grammar
def _tokens(text: str) -> list[tuple[str, bool]]:
    """``(character, escaped)`` pairs: ``\\x`` with ``x`` in :data:`_ESCAPABLE` is one escaped character."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            out.append((text[i + 1], True))
            i += 2
        else:
            out.append((text[i], False))
            i += 1
    return out


def _join(tokens: list[tuple[str, bool]]) -> str:
    """Back to source text, escapes kept (so a later step still sees which characters were escaped)."""
    return "".join("\\" + c if escaped else c for c, escaped in tokens)


def unescape(text: str) -> str:
    """The literal string of one expanded source: ``\\;`` -> ``;``, ``\\{`` -> ``{``, ``\\\\`` -> ``\\``."""
    return "".join(c for c, _ in _tokens(text))


def split_sources(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Split on unescaped ``;`` (and on the older ``::`` between plain paths); escapes and braces are kept.

    A list is taken as already split. Empty parts and surrounding spaces are dropped."""
    if not isinstance(spec, (str, Path)):
        return [str(s) for s in spec]
    tokens = _tokens(str(spec))
    parts, current, i = [], [], 0
    while i < len(tokens):
        c, escaped = tokens[i]
        if not escaped and c == ";":
            parts.append(current)
            current = []
        elif (not escaped and c == ":" and i + 1 < len(tokens) and tokens[i + 1] == (":", False)
              and not _is_chain(tokens, current, i + 2)):
            parts.append(current)
            current = []
            i += 1
        else:
            current.append((c, escaped))
        i += 1
    parts.append(current)
    return [s for s in (_join(p).strip() for p in parts) if s]


def _is_chain(tokens: list[tuple[str, bool]], before: list[tuple[str, bool]], after: int) -> bool:
    """``::`` is fsspec chaining when a URL follows it, or inside a ``pipe:`` command (left to the shell)."""
    rest = "".join(c for c, _ in tokens[after:])
    return bool(_URL.match(rest)) or "".join(c for c, _ in before).lstrip().startswith(PIPE)


def expand_braces(pattern: str) -> list[str]:
    """Expand the unescaped braces of one source (escapes kept in the results)."""
    tokens = _tokens(pattern)
    depth, start = 0, None
    for i, (c, escaped) in enumerate(tokens):
        if escaped:
            continue
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                return _expand_group(tokens, start, i, pattern)
    return [pattern]


def _expand_group(tokens, start: int, end: int, pattern: str) -> list[str]:
    body = tokens[start + 1:end]
    numeric = _RANGE.match("".join(c for c, _ in body)) if not any(e for _, e in body) else None
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise ValueError(f"empty brace range {{{first}..{last}}} in source {pattern!r}")
        options = [str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]
    else:
        options, current, depth = [], [], 0
        for c, escaped in body:
            if not escaped and c == "{":
                depth += 1
            elif not escaped and c == "}":
                depth -= 1
            if not escaped and c == "," and depth == 0:
                options.append(_join(current))
                current = []
            else:
                current.append((c, escaped))
        options.append(_join(current))
    head, tail = _join(tokens[:start]), _join(tokens[end + 1:])
    return [out for option in options for out in expand_braces(head + option + tail)]


def expand_sources(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Every concrete source of ``spec``: split (:func:`split_sources`), braces expanded, escapes resolved."""
    return [unescape(s) for part in split_sources(spec) for s in expand_braces(part)]


# ------------------------------------------------------------------------------------------------ opening
def is_pipe(source: str) -> bool:
    return str(source).startswith(PIPE)


def is_local(source: str | Path) -> bool:
    """A plain path (or ``file://``), as opposed to a remote URL, an fsspec chain or a ``pipe:`` command."""
    text = str(source)
    if is_pipe(text) or any(_URL.match(part) for part in text.split("::")[1:]):  # an fsspec chain
        return False
    return not _URL.match(text) or text.startswith("file://")


def local_path(source: str | Path) -> Path:
    text = str(source)
    return Path(os.path.expanduser(text[len("file://"):] if text.startswith("file://") else text))


def source_name(source: str | Path) -> str:
    """The last path part of a source (a shard's file name), for keys and messages."""
    text = str(source)
    if is_pipe(text):
        words = shlex.split(text[len(PIPE):]) or [text]
        urls = [w for w in words if _URL.match(w) or "/" in w]
        text = urls[0] if urls else words[-1]
    return text.rstrip("/").rsplit("/", 1)[-1].split("::")[0]


class _PipeReader:
    """The stdout of a shell command as a read-only binary file; a non-zero exit raises OSError on close."""

    def __init__(self, command: str):
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read(self, n: int = -1) -> bytes:
        return self.proc.stdout.read(n)  # type: ignore[union-attr]

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdout is not None:
            self.proc.stdout.close()  # a reader that stops early: the command gets SIGPIPE, not an error
            self.proc.wait()
            return
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        self.proc.wait()
        if self.proc.returncode != 0:
            raise OSError(f"pipe command exited with status {self.proc.returncode}: {self.command!r}"
                          + (f" ({err[-300:]})" if err else ""))

    def __enter__(self) -> _PipeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(source: str | Path) -> IO[bytes]:
    """A readable binary stream of one (expanded) source; close it (``with``) when done."""
    text = str(source)
    if is_pipe(text):
        return _PipeReader(text[len(PIPE):])  # type: ignore[return-value]
    if is_local(text):
        return open(local_path(text), "rb")
    import fsspec

    if text.startswith(("http://", "https://")):  # one streamed GET, not a range request per block
        return fsspec.open(text, "rb", block_size=0).open()
    return fsspec.open(text, "rb").open()


def _fs(source: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(source)


def source_exists(source: str | Path) -> bool:
    """Whether a source can be found (a ``pipe:`` command is taken to exist: only running it tells)."""
    text = str(source)
    if is_pipe(text):
        return True
    if is_local(text):
        return local_path(text).exists()
    fs, path = _fs(text)
    return with_retries(lambda: fs.exists(path), f"checking {text}")


def source_is_dir(source: str | Path) -> bool:
    text = str(source)
    if is_pipe(text):
        return False
    if is_local(text):
        return local_path(text).is_dir()
    fs, path = _fs(text)
    return with_retries(lambda: fs.isdir(path), f"checking {text}")


def list_files(folder: str | Path, suffix: str) -> list[str]:
    """Sorted sources of the files directly in ``folder`` whose names end with ``suffix``."""
    text = str(folder)
    if is_local(text):
        return sorted(str(p) for p in local_path(text).glob(f"*{suffix}") if p.is_file())
    fs, path = _fs(text)
    protocol = text.split("://", 1)[0]
    names = with_retries(lambda: fs.ls(path, detail=False), f"listing {text}")
    return sorted(f"{protocol}://{n.lstrip('/')}" if not _URL.match(n) else n for n in names if n.endswith(suffix))


def read_range(source: str | Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a seekable source (a member of an uncompressed tar), with retries."""
    text = str(source)
    if is_pipe(text):
        raise ValueError(f"cannot read a byte range of a pipe: source ({text}); copy the shards to a store or "
                         "a disk that allows random access")
    if is_local(text):
        with open(local_path(text), "rb") as f:
            f.seek(offset)
            return f.read(size)
    fs, path = _fs(text)
    return with_retries(lambda: fs.cat_file(path, start=offset, end=offset + size), f"reading {text}")


# ------------------------------------------------------------------------------------------------ folders
def local_mirror(url: str) -> Path:
    """A local folder standing for a remote one (``$XDG_CACHE_HOME/openeva/remote/<hash>``): outputs are
    written there and uploaded; remote inputs that need random access (memory maps) are copied there."""
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache / "openeva" / "remote" / hashlib.sha256(str(url).rstrip("/").encode()).hexdigest()[:20]


def fetch_files(url: str, local: Path, pattern: str = "**") -> list[Path]:
    """Copy the files under the remote folder ``url`` that match the glob ``pattern`` (relative to it) into
    ``local``, keeping their relative paths; returns the local paths (none if the folder does not exist)."""
    fs, root = _fs(str(url).rstrip("/"))
    root = root.rstrip("/")
    fs.invalidate_cache()  # another process may have written or deleted files since this one listed them
    names = with_retries(lambda: fs.glob(f"{root}/{pattern}"), f"listing {url}")
    out = []
    for name in sorted(names):
        if with_retries(lambda n=name: fs.isdir(n), f"checking {name}"):
            continue
        target = Path(local) / name[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with_retries(lambda n=name, t=target: fs.get_file(n, str(t)), f"copying {name}")
        out.append(target)
    return out


def upload_file(local: str | Path, url: str) -> None:
    """Put one local file at ``url`` (an object store writes an object whole: a reader never sees half)."""
    fs, path = _fs(str(url))
    with_retries(lambda: fs.put_file(str(local), path), f"uploading {local} to {url}")


# ------------------------------------------------------------------------------------------------ faults
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient error is retried: waits ``backoff * 2**k`` (capped)."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"retries, backoff and max_backoff must be >= 0, got {self}")

    def wait(self, attempt: int) -> None:
        time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt))


def is_transient(err: BaseException) -> bool:
    """Connection resets, timeouts, HTTP 5xx and dropped streams: worth another try. Missing files, refused
    permissions and 4xx answers are not."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status in (408, 429)
    if isinstance(err, (ConnectionError, TimeoutError, EOFError, OSError)):
        return True
    module = type(err).__module__.split(".")[0]
    return module in ("aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "fsspec")


def with_retries(fn: Callable[[], T], what: str, policy: RetryPolicy = RetryPolicy()) -> T:
    """``fn()``, retried on transient errors (:func:`is_transient`) with backoff; re-raises the last error."""
    for attempt in range(policy.retries + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below, re-raised unless transient
            if attempt == policy.retries or not is_transient(err):
                raise
            logger.warning("%s failed (%s: %s); retry %d of %d", what, type(err).__name__, err, attempt + 1,
                           policy.retries)
            policy.wait(attempt)
    raise AssertionError("unreachable")
