"""Test servers on 127.0.0.1, started by the tests: an HTTP file server that injects faults, and moto's S3.

Nothing here reaches beyond the machine: both bind 127.0.0.1 on a free port and stop with their fixture.
"""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager
from pathlib import Path



class FaultyFiles(http.server.BaseHTTPRequestHandler):
    """GET (with ``Range``) and HEAD of the files under ``root``; ``fail_first[name]`` requests of a file answer
    500 first, and a file in ``truncate`` is cut at half its bytes (the connection closes mid-body)."""

    root: Path
    fail_first: dict[str, int]
    truncate: set[str]
    requests: list[str]

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _file(self) -> Path | None:
        path = self.root / self.path.lstrip("/").split("?")[0]
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        path = self._file()
        self.requests.append(self.path)
        if path is None:
            self.send_error(404)
            return
        name = path.name
        if self.fail_first.get(name, 0) > 0:
            self.fail_first[name] -= 1
            self.send_error(500, "injected fault")
            return
        data = path.read_bytes()
        ranged = self.headers.get("Range")
        if ranged:
            start, _, end = ranged.removeprefix("bytes=").partition("-")
            first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            data = data[first:last + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if name in self.truncate and not ranged:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@contextmanager
def http_server(root: Path, fail_first: dict[str, int] | None = None, truncate: set[str] | None = None):
    """Serve ``root`` on 127.0.0.1; yields ``(base_url, handler class)`` (its ``requests`` log the GETs)."""
    handler = type("Handler", (FaultyFiles,), {"root": Path(root), "fail_first": dict(fail_first or {}),
                                               "truncate": set(truncate or ()), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def s3_server(monkeypatch, bucket: str = "shards"):
    """moto's S3 in server mode on 127.0.0.1, reached through the usual AWS environment variables (no
    credentials on any command line); yields a boto3 client with ``bucket`` created."""
    import socket

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
