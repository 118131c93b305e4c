"""Fixtures of tests/data: local HTTP and S3 servers (:mod:`remote_servers`)."""

import pytest
from remote_servers import http_server, s3_server


@pytest.fixture
def serve_http():
    """``with serve_http(root, fail_first={...}, truncate={...}) as (url, handler)``."""
    return http_server


@pytest.fixture
def s3(monkeypatch):
    """A boto3 client of a local moto S3 server with the bucket ``shards``; s3:// URLs reach it."""
    with s3_server(monkeypatch) as client:
        yield client
