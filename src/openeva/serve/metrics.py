"""Prometheus metrics of one service instance (its own registry: two apps in a process do not collide)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("openeva_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("openeva_request_latency_seconds", "HTTP request latency", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("openeva_batch_size", "items per model call", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue_depth = Gauge("openeva_queue_depth", "items waiting for the model", ["kind"],
                                 registry=self.registry)
        self.in_flight = Gauge("openeva_requests_in_flight", "requests being served", registry=self.registry)
        self.index_size = Gauge("openeva_index_vectors", "vectors in the index", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
