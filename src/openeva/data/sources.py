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

Not only shards: :func:`source_kind` (one look: file, folder or missing), :func:`list_files` / :func:`list_dirs`
(folders and class folders in a store; plain HTTP has no listing, and the error says so), :func:`read_bytes`
(an image or an index by URL) and :func:`join_source` (an index's relative paths against its URL) let every reader
take image folders and caption indexes from a store too. Reading speed: :class:`PrefetchedSource` downloads a
stream in a background thread (the next shard while one is decoded); :func:`read_range` keeps a few remote files
open with a read-ahead, so a shard's members read in order cost a request per few MiB.

Network faults: :func:`with_retries` retries transient errors (connection reset, timeout, HTTP 5xx) with
exponential backoff; :func:`is_transient` says which errors those are. Readers that stream (tar shards) resume
after the last good sample on a retry and, when the retries are spent, skip the rest of the shard and count it.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "PrefetchedSource", "RetryPolicy", "download", "expand_braces", "expand_sources", "fetch_files", "is_http", "is_local",
    "is_transient",
    "join_source", "list_dirs", "list_files", "local_mirror", "open_source", "parent_of", "read_bytes", "read_range",
    "read_text", "source_exists", "source_kind", "source_name", "split_sources", "unescape", "upload_file",
    "with_retries",
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

    if is_http(text):  # one streamed GET, not a range request per block
        return fsspec.open(text, "rb", block_size=0).open()
    return fsspec.open(text, "rb").open()


PREFETCH_BYTES = 64 << 20  # how far a prefetching reader may run ahead of its consumer
_CHUNK = 1 << 20


class PrefetchedSource:
    """A source read by a background thread into a bounded buffer (at most :data:`PREFETCH_BYTES` ahead): the
    download of a remote shard overlaps the decoding of the one before it. ``read`` hands on the thread's
    error (the reader retries as for any stream); ``close`` stops the thread."""

    def __init__(self, source: str, limit: int = PREFETCH_BYTES):
        self.source = source
        self._chunks: queue.Queue = queue.Queue(maxsize=max(1, limit // _CHUNK))
        self._stop = threading.Event()
        self._pending = b""
        self._done = False
        self._thread = threading.Thread(target=self._fill, name=f"prefetch {source_name(source)}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            with open_source(self.source) as f:
                while not self._stop.is_set():
                    data = f.read(_CHUNK)
                    if not self._put(data) or not data:
                        return
        except BaseException as err:  # noqa: BLE001 - handed to the reader, which decides
            self._put(err)

    def read(self, n: int = -1) -> bytes:
        out = [self._pending]
        have = len(self._pending)
        while not self._done and (n < 0 or have < n):
            item = self._chunks.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                break
            out.append(item)
            have += len(item)
        data = b"".join(out)
        if n < 0 or n >= len(data):
            self._pending = b""
            return data
        self._pending = data[n:]
        return data[:n]

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> PrefetchedSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fs(source: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(source)


def source_kind(source: str | Path) -> str | None:
    """``"file"``, ``"dir"`` or None (not found): one look (a stat, or one request to a store), with retries.

    A ``pipe:`` command counts as a file (only running it tells more). An ``http(s)://`` URL ending in ``/``
    counts as a folder without asking (plain HTTP has no folders; :func:`list_files` says so if the server
    gives no listing); other HTTP URLs are asked for (a HEAD) and are files when they answer."""
    text = str(source)
    if is_pipe(text):
        return "file"
    if is_local(text):
        path = local_path(text)
        return "dir" if path.is_dir() else "file" if path.exists() else None
    if is_http(text) and text.endswith("/"):
        return "dir"
    fs, path = _fs(text)
    try:
        info = with_retries(lambda: fs.info(path), f"checking {text}")
    except FileNotFoundError:
        return None
    return "dir" if info.get("type") == "directory" else "file"


def source_exists(source: str | Path) -> bool:
    """Whether a source can be found (:func:`source_kind` is not None)."""
    return source_kind(source) is not None


def is_http(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


def _no_listing(folder: str, err: BaseException | None = None) -> ValueError:
    why = f" ({type(err).__name__}: {err})" if err is not None else " (no links to files in its answer)"
    return ValueError(f"cannot list the folder {folder}: plain HTTP has no folder listing{why}. From an HTTP "
                      "server, read a caption index (.csv/.tsv/.jsonl listing the images, relative paths resolved "
                      "against the index's URL), tar shards named by a pattern ('shard-{000..099}.tar'), or use "
                      "an object store URL (s3://, gs://, az://, hf://) whose folders can be listed")


def _as_url(text: str, name: str) -> str:
    """fsspec's name of a listed object back as a URL of the same store as ``text``."""
    if _URL.match(name):
        return name
    return f"{text.split('://', 1)[0]}://{name.lstrip('/')}"


def list_files(folder: str | Path, suffix: str | tuple[str, ...], recursive: bool = False) -> list[str]:
    """Sorted sources of the files in ``folder`` (directly in it, or at any depth when ``recursive``) whose
    names end with ``suffix`` (or one of them; compared in lower case). Hidden files (``.name``) are left out.

    Over plain HTTP a folder can only be listed where the server answers with a page of links (fsspec reads
    those); ValueError saying so otherwise."""
    text = str(folder)
    suffixes = tuple(s.lower() for s in ((suffix,) if isinstance(suffix, str) else suffix))

    def wanted(name: str) -> bool:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        return base.lower().endswith(suffixes) and not base.startswith(".")

    if is_local(text):
        root = local_path(text)
        found = root.rglob("*") if recursive else root.glob("*")
        return sorted(str(p) for p in found if wanted(p.name) and p.is_file())
    fs, path = _fs(text)
    try:
        if recursive:
            names = with_retries(lambda: fs.find(path.rstrip("/")), f"listing {text}")
        else:
            names = [e["name"] for e in with_retries(lambda: fs.ls(path, detail=True), f"listing {text}")
                     if e.get("type") != "directory"]
    except Exception as err:  # noqa: BLE001 - HTTP servers answer a folder URL in many ways
        if is_http(text):
            raise _no_listing(text, err) from err
        raise
    files = sorted(_as_url(text, n) for n in names if wanted(n))
    if not files and is_http(text):
        raise _no_listing(text)
    return files


def list_dirs(folder: str | Path) -> list[str]:
    """Sorted sources of the sub-folders directly in ``folder`` (hidden ones left out): class folders."""
    text = str(folder)
    if is_local(text):
        return sorted(str(p) for p in local_path(text).iterdir() if p.is_dir() and not p.name.startswith("."))
    if is_http(text):
        raise _no_listing(text)
    fs, path = _fs(text)
    entries = with_retries(lambda: fs.ls(path, detail=True), f"listing {text}")
    names = [e["name"].rstrip("/") for e in entries if e.get("type") == "directory"]
    return sorted(_as_url(text, n) for n in names if not n.rsplit("/", 1)[-1].startswith("."))


def join_source(folder: str | Path, relative: str) -> str:
    """``relative`` (as written in an index) against ``folder`` (a path or a URL); an absolute path or a URL
    is returned as it is."""
    if _URL.match(relative) or relative.startswith("/"):
        return relative
    text = str(folder)
    if is_local(text):
        return str(local_path(text) / relative)
    return text.rstrip("/") + "/" + relative


def parent_of(source: str | Path) -> str:
    """The folder holding a file source (a path, or the URL up to its last ``/``)."""
    text = str(source)
    if is_local(text):
        return str(local_path(text).parent)
    return text.rsplit("/", 1)[0]


def read_bytes(source: str | Path) -> bytes:
    """The whole content of one source (a local file, a URL with retries, a ``pipe:`` command's output).

    FileNotFoundError for a missing file or object (so a missing listed image is skipped as ``missing_file``)."""
    text = str(source)
    if is_local(text):
        return local_path(text).read_bytes()
    if is_pipe(text):
        with open_source(text) as f:
            return f.read()
    fs, path = _fs(text)
    return with_retries(lambda: fs.cat_file(path), f"reading {text}")


def read_text(source: str | Path) -> str:
    """:func:`read_bytes` decoded as UTF-8 (invalid bytes replaced)."""
    return read_bytes(source).decode("utf-8", errors="replace")


READ_AHEAD = 4 << 20  # bytes fetched past a remote byte range, for the members that follow it
_OPEN_FILES_MAX = 4  # remote files kept open (with their read-ahead) per thread of a process


class _RemoteFiles(threading.local):
    """Per thread (and process: keyed by pid, as a forked DataLoader worker must not reuse its parent's
    connections) a few open remote files, least recently used first."""

    def __init__(self) -> None:
        self.files: OrderedDict[tuple[int, str], Any] = OrderedDict()

    def get(self, text: str) -> Any:
        key = (os.getpid(), text)
        f = self.files.pop(key, None)
        if f is None:
            fs, path = _fs(text)
            f = fs.open(path, "rb", block_size=READ_AHEAD, cache_type="readahead")
        self.files[key] = f
        while len(self.files) > _OPEN_FILES_MAX:
            _, old = self.files.popitem(last=False)
            old.close()
        return f

    def drop(self, text: str) -> None:
        self.files.pop((os.getpid(), text), None)


_remote_files = _RemoteFiles()


def read_range(source: str | Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a seekable source (a member of an uncompressed tar), with retries.

    A remote source stays open (a few per thread) with a read-ahead of :data:`READ_AHEAD` bytes, so reading the
    members of a shard in order (``openeva embed``) costs one request per few MiB, not one per image."""
    text = str(source)
    if is_pipe(text):
        raise ValueError(f"cannot read a byte range of a pipe: source ({text}); copy the shards to a store or "
                         "a disk that allows random access")
    if is_local(text):
        with open(local_path(text), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def read() -> bytes:
        try:
            f = _remote_files.get(text)
            f.seek(offset)
            data = f.read(size)
        except Exception as err:
            _remote_files.drop(text)  # a failed connection: the retry opens the file again
            if is_http(text) and "range requests" in str(err):  # fsspec's words for a server without Range
                raise RuntimeError(f"the HTTP server of {text} does not answer range requests, and openeva reads "
                                   "a tar member (embed, eval, serve) by its byte range: serve the shards from a "
                                   "server that supports Range (nginx, Apache, object stores do), or copy them to "
                                   "a local disk") from err
            raise
        if len(data) != size:
            _remote_files.drop(text)
            raise EOFError(f"{text}: {len(data)} of {size} bytes at offset {offset}")
        return data

    return with_retries(read, f"reading {text}")


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


def download(source: str | Path, target: str | Path) -> None:
    """Copy one source (a URL or a ``pipe:`` command) to the local file ``target`` in one streamed read,
    retried whole on a transient error: a shard that must be read twice (indexed, then read by byte range, as
    ``openeva embed`` does) is fetched once and read from disk."""
    import shutil

    def copy() -> None:
        with open_source(source) as f, open(target, "wb") as w:
            shutil.copyfileobj(f, w, _CHUNK)

    with_retries(copy, f"downloading {source}")


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
