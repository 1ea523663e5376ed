"""What a server is told: its limits and defaults (`ServeOptions`), the per-request parameters
(`RequestParams`), and the one error type every route answers with (`ServingError`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..configuration import _check_number, _check_positive_int

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""Pillow formats an upload may be in (JPEG includes the MPO files of phone cameras). An allow-list:
formats with a history of decoder bombs (FITS, among others) are never opened."""


class ServingError(Exception):
    """An answer other than 200: `{"error": {"code", "message"}}` with this status (and headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass
class ServeOptions:
    """The server's settings, as `focalnet serve` flags give them (see `focalnet serve --help`)."""

    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    """Images waiting for the model at most; more answers 503 with Retry-After."""
    timeout_s: float = 30.0
    """A request still queued after this answers 504."""
    top_k: int = 5
    threshold: float = 0.5
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_images: int = 32
    """Images in one request at most."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key; None: no key asked for."""
    cors_origins: list[str] = field(default_factory=list)
    model_name: str | None = None
    """The name in `/v2/models/{name}`; default: the checkpoint directory's or file's name."""
    fuse: bool = True
    """Fold LayerScale and normalisations into the weights (`fuse_for_inference`) after loading."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        for name in ("max_batch_size", "max_queue", "top_k", "max_pixels", "max_images"):
            _check_positive_int(name, getattr(self, name))
        for name in ("timeout_s", "max_upload_mb"):
            _check_number(name, getattr(self, name), low=0.0, low_open=True)
        _check_number("max_wait_ms", self.max_wait_ms, low=0.0)
        _check_number("threshold", self.threshold, low=0.0)
        if self.threshold > 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if isinstance(self.cors_origins, str):
            self.cors_origins = [self.cors_origins]
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ValueError(
                f"--api-key-env {self.api_key_env}: that environment variable is not set or empty; "
                f"export {self.api_key_env}=<key> before starting the server"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def api_key(self) -> str | None:
        return os.environ[self.api_key_env] if self.api_key_env else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RequestParams:
    """Per-request settings from the query string; what a task does not use it ignores."""

    top_k: int
    threshold: float
    label_map: bool = False
    """Semantic segmentation: answer {"segments", "label_map"} with the whole map as a palette PNG."""
    mask_ratio: float | None = None
    """Masked image modeling: the share of mask cells hidden (default: the pretraining's)."""
    seed: int = 0
    """Masked image modeling: the seed of the random mask."""
    blocks: str = "last"
    """`/visualize` of a classifier: the blocks whose modulators are drawn (as `focalnet visualize`)."""
    alpha: float = 0.5
    """`/visualize`: the weight of the heat map or the overlay."""
