"""Serving FocalNet models over HTTP (`focalnet serve`): transformers' pipeline JSON, dynamic
batching, limits, health probes, Prometheus metrics, a graceful drain, and Ray Serve to scale out.

Needs the `serve` extra (FastAPI, uvicorn, python-multipart, prometheus-client); Ray Serve the `ray` extra.
"""

from .app import create_app
from .options import ServeOptions

__all__ = ["ServeOptions", "create_app"]
