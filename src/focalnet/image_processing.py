"""`FocalNetImageProcessor`: images in, normalised `pixel_values` out (needs the `vision` extra).

Defaults are those of the `microsoft/focalnet-*` hub repos (HF's BitImageProcessor, PIL path):
RGB, resize the shortest edge to 256 (bilinear), centre-crop 224, scale to [0, 1], normalise
with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require_pillow() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("image loading needs Pillow: pip install 'focalnet[vision]'") from None
    return Image, ImageOps


def load_image(path: str | os.PathLike) -> Any:
    """Open an image file as an RGB PIL image, upright per its EXIF orientation."""
    image_module, image_ops = _require_pillow()
    try:
        with image_module.open(path) as image:
            image = image_ops.exif_transpose(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file at {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image ({err})") from None


class FocalNetImageProcessor:
    """Resize, centre-crop, rescale and normalise, like HF's image processors."""

    def __init__(
        self,
        shortest_edge: int = 256,
        crop_size: int = 224,
        resample: str = "bilinear",
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if resample not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"resample must be bilinear, bicubic or nearest, got {resample!r}")
        self.shortest_edge = shortest_edge
        self.crop_size = crop_size
        self.resample = resample
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    def __call__(self, images: Any, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        batch = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.stack([self.preprocess(image) for image in batch])}

    def preprocess(self, image: Any) -> torch.Tensor:
        """One image (path or PIL image) -> (3, crop, crop) float tensor."""
        image_module, _ = _require_pillow()
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        if not isinstance(image, image_module.Image):
            raise TypeError(f"expected an image path or a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        width, height = image.size
        scale = self.shortest_edge / min(width, height)
        size = (self.shortest_edge, int(max(width, height) * scale))
        new_width, new_height = size if width <= height else size[::-1]
        filters = {"bilinear": image_module.BILINEAR, "bicubic": image_module.BICUBIC, "nearest": image_module.NEAREST}
        image = image.resize((new_width, new_height), filters[self.resample])
        top, left = (new_height - self.crop_size) // 2, (new_width - self.crop_size) // 2
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.crop_size, self.crop_size, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std
