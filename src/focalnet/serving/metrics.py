"""Prometheus metrics of one server (its own registry, so several apps can share a process)."""

from __future__ import annotations


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
        self.queue_depth = prometheus.Gauge("focalnet_queue_depth", "Images waiting for the model", registry=registry)
        self.in_flight = prometheus.Gauge(
            "focalnet_requests_in_flight", "Requests to /predict and /visualize being answered", registry=registry
        )
        self.images = prometheus.Counter("focalnet_images", "Images answered", registry=registry)
        self.errors = prometheus.Counter("focalnet_errors", "Error answers by kind", ["kind"], registry=registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        prometheus = _prometheus()
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST
