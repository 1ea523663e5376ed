"""`FocalNetImageProcessor`: images in, normalised `pixel_values` out (needs the `vision` extra).

Three presets (`FocalNetImageProcessor.from_preset`) reproduce the pipelines the released
weights were evaluated with:

* ``"hf"`` (the default): transformers' BitImageProcessor, PIL path, as configured in the
  ``microsoft/focalnet-*`` hub repos: resize the shortest edge to 256 (bilinear), centre-crop
  224 (offset floored), rescale by 1/255, normalise with the ImageNet mean and std.
* ``"timm"``: timm's eval transform: shortest edge floor(224 / 0.9) = 248 (bicubic), centre
  crop 224 with torchvision's rounded offset; 384 px models use crop_pct 1.0.
* ``"original"``: microsoft/FocalNet: shortest edge int(256 / 224 * size) (bicubic),
  torchvision centre crop.

Every input becomes an 8-bit RGB PIL image first, then Pillow resizes and crops it, exactly as
HF's PIL backend and torchvision (on PIL images) do:

* EXIF orientation is applied (files and PIL images).
* 16-bit greyscale ("I;16*" and "I", values clipped to 0..65535) becomes 8-bit as
  round(v / 257), a linear map of 0..65535 onto 0..255; Pillow's own conversion clips at 255.
* Transparency (RGBA, LA, PA, or a palette/greyscale/RGB image with a transparent colour) is
  composited onto white, as transformers' ``convert_to_rgb`` does (it no longer drops alpha).
* Other modes (L, P, CMYK, 1, ...) go through Pillow's ``convert("RGB")``, as in transformers.
* Arrays (numpy (H, W, C), torch (C, H, W), or (H, W) greyscale, C in 1, 3, 4) may be uint8,
  uint16 (scaled like 16-bit files) or float in [0, 1] (rounded to the nearest of 256 levels,
  so k / 255 gives back k).

Pixels outside the image (a crop larger than the resized image) are 0 before normalisation,
as in both transformers and torchvision. Rescaling is done in float64 and rounded to float32,
normalisation in float32, as in transformers.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import torch

from ._io import atomic_write, read_json_object

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_NAME = "preprocessor_config.json"
PIPELINES = ("hf", "timm", "original")

# Pillow's integer codes for the filters we support (what preprocessor_config.json stores).
RESAMPLE_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}
DEFAULT_CROP_PCT = 224 / 256
CROP_ROUNDINGS = ("floor", "round")
# The preprocessor_config.json keys this processor honours; any others are ignored.
HF_KEYS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "crop_rounding",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)

ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor"


def _vision() -> tuple[ModuleType, ModuleType, ModuleType]:
    """Pillow's `Image` and `ImageOps` and numpy, or an ImportError that names the extra."""
    try:
        import numpy
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("FocalNetImageProcessor needs Pillow and numpy: pip install 'focalnet[vision]'") from None
    return Image, ImageOps, numpy


# ------------------------------------------------------------------------------------------------
# Any input -> 8-bit RGB PIL image
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
"""File suffixes taken as images when a directory is searched (prediction, training folders)."""


def image_files(root: Path) -> list[Path]:
    """The image files (by `IMAGE_SUFFIXES`) under the directory `root`, recursively, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as an RGB PIL image (EXIF orientation applied, see `to_rgb_image`)."""
    return _open_rgb(path, path)


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than allowed: refused before it is decoded."""


def decode_image(
    data: bytes, name: str = "the data", formats: Sequence[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Encoded image bytes (an upload, a dataset row, a member of a tar shard) as an RGB PIL image,
    exactly as `load_image` reads a file holding them; `name` says where they came from in errors.

    `formats` is an allow-list of Pillow format names (None: every format Pillow knows); `max_pixels`
    refuses, from the header and before decoding, an image of more pixels (`ImageTooLargeError`).
    """
    if not data:
        raise ValueError(f"{name} is empty: no image data")
    return _open_rgb(io.BytesIO(data), name, formats, max_pixels)


def _open_rgb(
    source: str | os.PathLike[str] | IO[bytes],
    name: str | os.PathLike[str],
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """The first frame of an image, decoded and made RGB; a ValueError naming `name` and the reason otherwise."""
    image_module, _, _ = _vision()
    try:
        with image_module.open(source, formats=formats) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is {image.width}x{image.height} = {image.width * image.height:,} pixels, more than the "
                    f"{max_pixels:,} allowed; send a smaller image"
                )
            image.load()
            return to_rgb_image(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file at {name}") from None
    except ImageTooLargeError:
        raise
    except image_module.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name} is too large to decode safely ({error})") from None
    except image_module.UnidentifiedImageError:
        accepted = ", ".join(formats) if formats else "any format Pillow reads"
        raise ValueError(f"cannot read {name} as an image: not an image in an accepted format ({accepted})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {name} as an image: it is damaged or truncated ({error})") from None


def to_rgb_image(image: ImageInput) -> Image.Image:
    """Any supported input (file path, PIL image, numpy/torch array) as an 8-bit RGB PIL image."""
    image_module, _, numpy = _vision()
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, image_module.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _pil_to_rgb(_array_to_pil(_tensor_to_hwc(image)))
    if isinstance(image, numpy.ndarray):
        _check_shape(image.shape, channels_first=False, layout="(H, W, C) numpy array")
        return _pil_to_rgb(_array_to_pil(image))
    raise TypeError(f"expected an image path, PIL image, numpy array or torch tensor, got {type(image).__name__}")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """Upright (EXIF), 8-bit, transparency on white, RGB."""
    image_module, image_ops, _ = _vision()
    image = image_ops.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = _sixteen_bit_to_l(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = image_module.new("RGBA", image.size, (255, 255, 255, 255))
        return image_module.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit ("I;16*") or 32-bit integer ("I") greyscale image as 8-bit "L", 0..65535 -> 0..255."""
    image_module, _, numpy = _vision()
    values = numpy.clip(numpy.asarray(image, dtype=numpy.int64), 0, 65535)
    return image_module.fromarray(_scale_sixteen_bit(values))


def _scale_sixteen_bit(values: np.ndarray) -> np.ndarray:
    """round(v / 257) for integers in 0..65535, as uint8 (257 is odd: no ties)."""
    _, _, numpy = _vision()
    return ((values.astype(numpy.int64) + 128) // 257).astype(numpy.uint8)


def _check_shape(shape: Sequence[int], channels_first: bool, layout: str) -> None:
    """Accept (H, W), or (H, W, C) / (C, H, W) with C in 1, 3, 4 and H, W > 0; name the shape otherwise."""
    if len(shape) == 3:
        channels, spatial = (shape[0], shape[1:]) if channels_first else (shape[-1], shape[:2])
    else:
        channels, spatial = 1, shape
    if len(shape) not in (2, 3) or channels not in (1, 3, 4) or 0 in spatial:
        raise ValueError(f"expected a {layout} with 1, 3 or 4 channels, or (H, W) greyscale; got shape {tuple(shape)}")


def _tensor_to_hwc(tensor: torch.Tensor) -> np.ndarray:
    """A (C, H, W) or (H, W) tensor as a (H, W, C) or (H, W) numpy array."""
    _check_shape(tuple(tensor.shape), channels_first=True, layout="(C, H, W) tensor")
    tensor = tensor.detach().cpu()
    if tensor.dtype.is_floating_point:
        tensor = tensor.double()
    if tensor.ndim == 3:
        tensor = tensor.permute(1, 2, 0)
    return tensor.numpy()


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """A (H, W, C) or (H, W) array (uint8, uint16 or float in [0, 1]) as an L, RGB or RGBA image."""
    image_module, _, numpy = _vision()
    if array.dtype == numpy.uint8:
        pixels = array
    elif array.dtype == numpy.uint16:
        pixels = _scale_sixteen_bit(array)
    elif numpy.issubdtype(array.dtype, numpy.floating):
        pixels = _float_to_uint8(array)
    else:
        raise ValueError(f"unsupported pixel type {array.dtype}: use uint8, uint16 or float in [0, 1]")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return image_module.fromarray(numpy.ascontiguousarray(pixels))


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> the nearest of the 256 levels."""
    _, _, numpy = _vision()
    values = array.astype(numpy.float64)
    if not (numpy.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
        raise ValueError(
            f"float images must hold values in [0, 1], got [{values.min()}, {values.max()}]"
            " (divide 0..255 values by 255)"
        )
    return numpy.rint(values * 255.0).astype(numpy.uint8)


# ------------------------------------------------------------------------------------------------
# Geometry
def _resample_name(value: str | int) -> str:
    """'bilinear', 'bicubic' or 'nearest', from that name or Pillow's integer code (2, 3, 0)."""
    if isinstance(value, str) and value in RESAMPLE_CODES:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        for name, code in RESAMPLE_CODES.items():
            if code == value:
                return name
    raise ValueError(f"resample must be one of {list(RESAMPLE_CODES)} or Pillow codes 0, 2, 3; got {value!r}")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """An int (square) or (height, width) as a (height, width) pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) with the shorter side set to `shortest_edge`, the longer truncated like HF/torchvision."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def crop_start(length: int, crop: int, rounding: str) -> int:
    """First source pixel of a centred crop along one axis (negative: the crop starts in the padding).

    "floor" is transformers' floor((length - crop) / 2); "round" is torchvision's
    int(round((length - crop) / 2)) (ties to even) and, for a crop larger than the image, its
    padding of (crop - length) // 2 before.
    """
    if rounding == "floor":
        return (length - crop) // 2
    if length >= crop:
        return round((length - crop) / 2)  # ties to even, as torchvision
    return -((crop - length) // 2)


# ------------------------------------------------------------------------------------------------
class FocalNetImageProcessor:
    """Resize (shortest edge or fixed size), centre-crop, rescale and normalise, like HF's image processors.

    Args:
        do_resize: resize before cropping.
        size: shortest edge (int) or exact (height, width). None: floor(crop / crop_pct), with
            the crop's longer side (timm's rule for square crops).
        crop_pct: the crop's share of the resized image (timm), only with `size=None`; None
            means 224/256 (shortest edge 256 for a 224 crop).
        resample: "bilinear", "bicubic", "nearest", or Pillow's code 2, 3, 0.
        do_center_crop: centre-crop to `crop_size` (int or (height, width)).
        crop_rounding: centre offset "floor" (transformers) or "round" (torchvision, timm).
        do_rescale, rescale_factor: multiply the 0..255 pixels by `rescale_factor`.
        do_normalize, image_mean, image_std: subtract the mean and divide by the std per channel.
    """

    def __init__(
        self,
        *,
        do_resize: bool = True,
        size: int | Sequence[int] | None = None,
        crop_pct: float | None = None,
        resample: str | int = "bilinear",
        do_center_crop: bool = True,
        crop_size: int | Sequence[int] = 224,
        crop_rounding: str = "floor",
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.crop_size = _pair(crop_size, "crop_size")
        self.size = self._resolve_size(size, crop_pct)
        self.do_resize = _flag(do_resize, "do_resize")
        self.resample = _resample_name(resample)
        self.do_center_crop = _flag(do_center_crop, "do_center_crop")
        if crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}, got {crop_rounding!r}")
        self.crop_rounding = crop_rounding
        self.do_rescale = _flag(do_rescale, "do_rescale")
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = _flag(do_normalize, "do_normalize")
        self.image_mean = _channel_values(image_mean, "image_mean")
        self.image_std = _channel_values(image_std, "image_std")
        if 0.0 in self.image_std:
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")

    def _resolve_size(self, size: int | Sequence[int] | None, crop_pct: float | None) -> int | tuple[int, int]:
        """The resize target: a shortest edge (int) or (height, width)."""
        if size is not None:
            if crop_pct is not None:
                raise ValueError("give size or crop_pct, not both")
            if isinstance(size, int) and not isinstance(size, bool):
                return _pair(size, "size")[0]
            return _pair(size, "size")
        crop_pct = DEFAULT_CROP_PCT if crop_pct is None else crop_pct
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        return math.floor(max(self.crop_size) / crop_pct)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, image_size: int = 224) -> FocalNetImageProcessor:
        """The evaluation pipeline "hf", "timm" or "original" (see the module docstring) at `image_size`."""
        if name == "hf":
            return cls(crop_size=image_size, resample="bilinear")
        if name == "timm":
            crop_pct = 1.0 if image_size >= 384 else 0.9
            return cls(crop_pct=crop_pct, crop_size=image_size, resample="bicubic", crop_rounding="round")
        if name == "original":
            size = int(256 / 224 * image_size)
            return cls(size=size, crop_size=image_size, resample="bicubic", crop_rounding="round")
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> FocalNetImageProcessor:
        """Read an HF `preprocessor_config.json` (the file, or a directory holding it); unknown keys are ignored."""
        file = Path(path)
        if file.is_dir():
            file = file / CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}")
        config = read_json_object(file)
        try:
            return cls.from_dict(config)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{file} is not a usable preprocessor config: {err}") from None

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FocalNetImageProcessor:
        """Build from an HF preprocessor config as a dict (what `to_dict` gives); unknown keys are ignored."""
        return cls(**_kwargs_from_hf(config))

    def to_dict(self) -> dict[str, Any]:
        """The settings as an HF `preprocessor_config.json` (BitImageProcessor) plus `crop_rounding`."""
        if isinstance(self.size, int):
            size: dict[str, int] = {"shortest_edge": self.size}
        else:
            size = {"height": self.size[0], "width": self.size[1]}
        return {
            "image_processor_type": "BitImageProcessor",
            "do_convert_rgb": True,
            "do_resize": self.do_resize,
            "size": size,
            "resample": RESAMPLE_CODES[self.resample],
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "crop_rounding": self.crop_rounding,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/preprocessor_config.json` atomically; returns its path."""
        path = Path(directory) / CONFIG_NAME
        with atomic_write(path) as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"

    # -- processing ----------------------------------------------------------------------------
    def __call__(self, images: ImageInput | Sequence[ImageInput], return_tensors: str = "pt") -> dict[str, Any]:
        """One image or a list of them -> {"pixel_values": float tensor (B, 3, H, W)}."""
        return self.preprocess(images, return_tensors=return_tensors)

    def preprocess(self, images: ImageInput | Sequence[ImageInput], return_tensors: str = "pt") -> dict[str, Any]:
        """Same as calling the processor."""
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("no images given")
        tensors = [self.transform(image) for image in batch]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"images came out in different sizes {sorted(shapes)}; crop or resize to a fixed size")
        return {"pixel_values": torch.stack(tensors)}

    def transform(self, image: ImageInput) -> torch.Tensor:
        """One image -> (3, H, W) float32 tensor."""
        rgb = to_rgb_image(image)
        if self.do_resize:
            rgb = self.resize(rgb)
        if self.do_center_crop:
            rgb = self.center_crop(rgb)
        return self.to_tensor(rgb)

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize with Pillow to `size` (shortest edge or (height, width))."""
        image_module, _, _ = _vision()
        if isinstance(self.size, int):
            width, height = shortest_edge_size(image.width, image.height, self.size)
        else:
            height, width = self.size
        return image.resize((width, height), image_module.Resampling(RESAMPLE_CODES[self.resample]))

    def center_crop(self, image: Image.Image) -> Image.Image:
        """Centre crop to `crop_size`; where the crop leaves the image the pixels are 0."""
        crop_height, crop_width = self.crop_size
        top = crop_start(image.height, crop_height, self.crop_rounding)
        left = crop_start(image.width, crop_width, self.crop_rounding)
        return image.crop((left, top, left + crop_width, top + crop_height))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, H, W) float32: rescaled (in float64, like HF) and normalised."""
        _, _, numpy = _vision()
        pixels = torch.from_numpy(numpy.array(image, dtype=numpy.uint8)).permute(2, 0, 1)
        values = (pixels.double() * self.rescale_factor).float() if self.do_rescale else pixels.float()
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
            values = (values - mean) / std
        return values.contiguous()


def _flag(value: bool, what: str) -> bool:
    """A real bool (a JSON string such as "false" must not count as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def _channel_values(values: float | Sequence[float], what: str) -> tuple[float, float, float]:
    """Three per-channel floats (one number is used for all three)."""
    result = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(result) != 3:
        raise ValueError(f"{what} needs 3 values (R, G, B), got {len(result)}")
    return result  # type: ignore[return-value]


def _kwargs_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from the keys of an HF preprocessor config that this processor understands."""
    kwargs = {key: config[key] for key in HF_KEYS if config.get(key) is not None}
    if "size" in kwargs:
        kwargs["size"] = _hf_size(kwargs["size"])
    if isinstance(kwargs.get("crop_size"), dict):
        kwargs["crop_size"] = (kwargs["crop_size"]["height"], kwargs["crop_size"]["width"])
    return kwargs


def _hf_size(value: Any) -> int | tuple[int, int]:
    """HF's `size`: {"shortest_edge": n}, {"height": h, "width": w}, or a bare int (shortest edge)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return value["shortest_edge"]
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return (value["height"], value["width"])
    raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height': h, 'width': w}}, got {value!r}")
