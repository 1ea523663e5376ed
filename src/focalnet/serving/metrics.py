"""Prometheus metrics of one server (its own registry, so several apps can share a process).

With several worker processes (`focalnet serve --workers N`, or any server that sets
PROMETHEUS_MULTIPROC_DIR, as gunicorn setups do) each process writes its values to that folder and
every `/metrics` answer sums all of them, whichever worker answers the scrape.
"""

from __future__ import annotations

import os

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("serving needs prometheus-client: pip install 'focalnet[serve]'") from None
    return prometheus_client


class ServingMetrics:
    """Requests by route and status, latency, requests in flight, batch sizes and times, queue depth,
    images, errors by kind."""

    def __init__(self) -> None:
        prometheus = _prometheus()
        self.registry = prometheus.CollectorRegistry()
        registry = self.registry
        self.requests = prometheus.Counter(
            "focalnet_requests", "HTTP requests by route and status code", ["route", "status"], registry=registry
        )
        self.latency = prometheus.Histogram(
            "focalnet_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.batch_size = prometheus.Histogram(
            "focalnet_batch_size", "Images per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry
        )
        self.batch_seconds = prometheus.Histogram(
            "focalnet_batch_duration_seconds", "Time the model took per batch", registry=registry
        )
        # gauges of live processes add up across workers (ignored with one process)
        self.queue_depth = prometheus.Gauge(
            "focalnet_queue_depth", "Images waiting for the model", registry=registry, multiprocess_mode="livesum"
        )
        self.in_flight = prometheus.Gauge(
            "focalnet_requests_in_flight",
            "Requests to /predict and /visualize being answered",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.loaded = prometheus.Gauge(
            "focalnet_loaded_workers",
            "Server processes with the model loaded and warmed",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.images = prometheus.Counter("focalnet_images", "Images answered", registry=registry)
        self.errors = prometheus.Counter("focalnet_errors", "Error answers by kind", ["kind"], registry=registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        prometheus = _prometheus()
        registry = self.registry
        if os.environ.get(MULTIPROCESS_DIR):
            from prometheus_client import multiprocess

            registry = prometheus.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST
