"""Segmentation inference as mmsegmentation evaluates it: keep-ratio test resize, whole-image or
sliding-window logits, and bilinear resizing of the logits back to the original image size.

A segmentation model is any `nn.Module` called as `model(pixel_values)` that returns an object
whose `.logits` are (B, K, H, W) at the input's size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write, read_json_object
from ..image_processing import CONFIG_NAME, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from PIL import Image

PROCESSOR_TYPE = "focalnet-segmentation"


def _functional() -> ModuleType:
    """torchvision's `transforms.v2.functional`, or an ImportError that names the extra."""
    try:
        from torchvision.transforms.v2 import functional
    except ImportError:
        raise ImportError(
            "segmentation preprocessing needs torchvision: pip install 'focalnet[segmentation]'"
        ) from None
    return functional


def fit_scale(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(height, width) rescaled to fit `scale` keeping the aspect ratio, as mmsegmentation's keep-ratio Resize.

    The factor is min(long / max(h, w), short / min(h, w)) with long, short the larger and smaller
    of `scale` (so its order does not matter); each side becomes int(side * factor + 0.5).
    """
    long, short = max(scale), min(scale)
    factor = min(long / max(height, width), short / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@dataclass
class SegmentationPreprocessing:
    """The test-time transform of a segmentation model: keep-ratio resize to `test_scale`, then normalise.

    `test_scale` is (long, short) as in mmsegmentation's configs (e.g. (2048, 512) for ADE20K);
    None keeps the image's size. `do_reduce_labels` records the label convention of the training
    data (transformers' name: ADE20K's 0 = "other" ignored, classes shifted down), so evaluation
    reads label maps the same way. Saved as `preprocessor_config.json` beside the weights.
    """

    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    test_scale: tuple[int, int] | None = (2048, 512)
    do_reduce_labels: bool = False

    def __post_init__(self) -> None:
        self.image_mean = _three_floats(self.image_mean, "image_mean")
        self.image_std = _three_floats(self.image_std, "image_std")
        if 0.0 in self.image_std:
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        if self.test_scale is not None:
            scale = tuple(self.test_scale)
            if len(scale) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in scale):
                raise ValueError(f"test_scale must be two positive ints or None, got {self.test_scale!r}")
            self.test_scale = scale  # type: ignore[assignment]

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, tagged with "processor_type"."""
        return {
            "processor_type": PROCESSOR_TYPE,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "test_scale": None if self.test_scale is None else list(self.test_scale),
            "do_reduce_labels": self.do_reduce_labels,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentationPreprocessing:
        """The inverse of `to_dict`; unknown keys or another "processor_type" are a ValueError."""
        values = dict(values)
        kind = values.pop("processor_type", PROCESSOR_TYPE)
        if kind != PROCESSOR_TYPE:
            raise ValueError(f"processor_type must be {PROCESSOR_TYPE!r}, got {kind!r}")
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown segmentation preprocessing keys: {', '.join(unknown)}")
        return cls(**values)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/preprocessor_config.json` atomically; returns its path."""
        path = Path(directory) / CONFIG_NAME
        with atomic_write(path) as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SegmentationPreprocessing:
        """Read `directory/preprocessor_config.json`; the defaults when there is none."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            return cls()
        values = read_json_object(path)
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a usable segmentation preprocessing config: {error}") from None

    # -- processing ----------------------------------------------------------------------------
    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """An RGB PIL image or uint8 (3, H, W) tensor -> normalised float32 (3, h, w) at the test scale.

        The uint8 image is resized (bilinear, antialiased) before the conversion to float, as
        mmsegmentation resizes the uint8 image before normalising.
        """
        functional = _functional()
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a uint8 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
            pixels = image
        else:
            from ..image_processing import to_rgb_image

            pixels = functional.pil_to_tensor(to_rgb_image(image))
        if self.test_scale is not None:
            size = fit_scale(pixels.shape[-2], pixels.shape[-1], self.test_scale)
            if size != tuple(pixels.shape[-2:]):
                pixels = functional.resize(
                    pixels, list(size), interpolation=functional.InterpolationMode.BILINEAR, antialias=True
                )
        values = functional.to_dtype(pixels, torch.float32, scale=True)
        return functional.normalize(values, list(self.image_mean), list(self.image_std))


def _three_floats(values: Sequence[float], what: str) -> tuple[float, float, float]:
    result = tuple(float(v) for v in values)
    if len(result) != 3:
        raise ValueError(f"{what} needs 3 values (R, G, B), got {len(result)}")
    return result  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# logits
def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """An int (square) or (height, width) as a pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width) of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _window_and_stride(
    window: int | Sequence[int], stride: int | Sequence[int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validated (height, width) window and stride; the stride defaults to 2/3 of the window, rounded."""
    window = _pair(window, "window")
    if stride is None:
        return window, (max(1, round(window[0] * 2 / 3)), max(1, round(window[1] * 2 / 3)))
    stride = _pair(stride, "stride")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"stride {stride} must not exceed the window {window}: pixels would be skipped")
    return window, stride


def _logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The model's float32 logits, checked to be (B, K, H, W) at the input's size."""
    logits = model(pixel_values).logits
    batch, _, height, width = pixel_values.shape
    if logits.ndim != 4 or logits.shape[0] != batch or logits.shape[-2:] != (height, width):
        raise ValueError(
            f"the model must return logits (B, K, H, W) at the input's size {(height, width)}, "
            f"got {tuple(logits.shape)} for input {tuple(pixel_values.shape)}"
        )
    return logits.float()


def sliding_window_logits(
    model: nn.Module,
    pixel_values: torch.Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """(B, K, H, W) float32 logits from overlapping windows, as mmsegmentation's slide inference.

    Windows start every `stride` pixels (default 2/3 of the window, rounded); the last one in each
    direction is shifted back to end at the image's edge, and an image smaller than the window is
    one window of the image's size. Each pixel's logits are the mean over the windows covering it.
    """
    (window_h, window_w), (stride_h, stride_w) = _window_and_stride(window, stride)
    _, _, height, width = pixel_values.shape
    rows = max(height - window_h + stride_h - 1, 0) // stride_h + 1
    columns = max(width - window_w + stride_w - 1, 0) // stride_w + 1
    total: torch.Tensor | None = None
    count = pixel_values.new_zeros((1, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for column in range(columns):
            y1 = min(row * stride_h, max(height - window_h, 0))
            x1 = min(column * stride_w, max(width - window_w, 0))
            y2, x2 = min(y1 + window_h, height), min(x1 + window_w, width)
            logits = _logits(model, pixel_values[:, :, y1:y2, x1:x2])
            if total is None:
                total = logits.new_zeros((*logits.shape[:2], height, width))
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def predict_logits(
    model: nn.Module,
    pixel_values: torch.Tensor,
    output_size: tuple[int, int] | None = None,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """(B, K, H, W) float32 logits, whole-image or (with `window`) sliding-window, without gradients.

    With `output_size` (the original image's (height, width)) the logits are resized to it
    bilinearly (align_corners=False), as mmsegmentation does before the argmax. The model is run
    in whatever mode it is in: put it in eval mode first (and restore it after) if it is training.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    if window is None and stride is not None:
        raise ValueError("a stride needs a window: give window= for sliding-window inference")
    with torch.no_grad():
        if window is None:
            logits = _logits(model, pixel_values)
        else:
            logits = sliding_window_logits(model, pixel_values, window, stride)
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits
