"""Prometheus metrics of the service, in a registry of its own (one per app)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fmnist_requests",
            "HTTP requests by path and status",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fmnist_request_seconds",
            "Request latency by path",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("fmnist_images", "Images classified", registry=self.registry)
        self.file_errors = Counter(
            "fmnist_file_errors", "Uploaded files that could not be read", registry=self.registry
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch} - {0})
        self.batch_size = Histogram(
            "fmnist_batch_images",
            "Images per forward pass",
            buckets=[b for b in buckets if b <= max_batch] + [float("inf")],
            registry=self.registry,
        )

    def observe_request(self, path: str, status: int, started: float) -> None:
        known = path if path in _PATHS else "other"  # never a label per random URL
        self.requests.labels(known, str(status)).inc()
        self.latency.labels(known).observe(time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_PATHS = {"/v1/predict", "/v1/model", "/v1/samples", "/health", "/ready", "/metrics", "/", "/docs"}
