"""Segmentation maps of image files: a label PNG (pixel value = label) and a coloured overlay with a legend."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._io import atomic_path, unique_stem
from ..image_processing import load_image
from .inference import SegmentationPreprocessing, predict_logits

if TYPE_CHECKING:
    from PIL import Image

MAX_PALETTE_LABELS = 256
"""Label maps with at most this many labels are saved as palette PNGs, larger ones as 16-bit greyscale."""


def _vision() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """numpy and Pillow's `Image`, `ImageDraw` and `ImageFont`, or an ImportError that names the extra."""
    try:
        import numpy
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("segmentation drawings need Pillow and numpy: pip install 'focalnet[segmentation]'") from None
    return numpy, Image, ImageDraw, ImageFont


def palette(num_labels: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: label i's bits spread over the high bits of R, G and B.

    Label 0 is black; every label below 2**24 gets its own colour, and no colour is white.
    """
    if not 0 <= num_labels <= 2**24:
        raise ValueError(f"num_labels must be in 0..2**24, got {num_labels}")
    colours = []
    for label in range(num_labels):
        red = green = blue = 0
        for shift in range(7, -1, -1):
            red |= (label & 1) << shift
            green |= ((label >> 1) & 1) << shift
            blue |= ((label >> 2) & 1) << shift
            label >>= 3
        colours.append((red, green, blue))
    return colours


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    """`labels` as a CPU int64 (H, W) tensor."""
    if labels.ndim != 2 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer (H, W) tensor, got {labels.dtype} {tuple(labels.shape)}")
    return labels.detach().cpu().long()


def label_map_image(labels: torch.Tensor, num_labels: int) -> Image.Image:
    """`labels` (H, W) as an image whose pixel values are the labels.

    Up to 256 labels: a palette ("P") image with `palette(256)` embedded, so viewers show colours
    and `np.array(image)` gives the labels. More: a 16-bit greyscale ("I;16") image.
    """
    numpy, image_module, _, _ = _vision()
    labels = _check_labels(labels)
    limit = 255 if num_labels <= MAX_PALETTE_LABELS else 65535
    if labels.numel() and (labels.min() < 0 or labels.max() > limit):
        raise ValueError(
            f"labels must be in 0..{limit} for {num_labels} labels, got {labels.min().item()}..{labels.max().item()}"
        )
    if num_labels > MAX_PALETTE_LABELS:
        return image_module.fromarray(labels.numpy().astype(numpy.uint16))
    image = image_module.fromarray(labels.numpy().astype(numpy.uint8))
    image.putpalette([value for colour in palette(MAX_PALETTE_LABELS) for value in colour])
    return image


def save_label_map(labels: torch.Tensor, path: str | os.PathLike, num_labels: int) -> Path:
    """Write `label_map_image(labels, num_labels)` as a PNG, atomically; returns the path."""
    image = label_map_image(labels, num_labels)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _font(size: int):
    """Pillow's default font at `size` pixels; its small bitmap font where FreeType is missing."""
    _, _, _, image_font = _vision()
    try:
        return image_font.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or no FreeType
        return image_font.load_default()


def draw_overlay(
    image: Image.Image,
    labels: torch.Tensor,
    names: dict[int, str],
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> Image.Image:
    """`image` blended with the label colours, and a legend of the classes present on the right.

    Each labelled pixel is (1 - alpha) * image + alpha * colour, rounded; pixels equal to
    `ignore_index` (None: no label is ignored) keep the image's. The legend lists a colour swatch
    and the name of every label present, sorted; the canvas grows taller than the image when the
    legend needs it. Text scales with the image (12 to 48 px).
    """
    numpy, image_module, image_draw, _ = _vision()
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    labels = _check_labels(labels)
    rgb = numpy.asarray(image.convert("RGB"), dtype=numpy.float64)
    if tuple(labels.shape) != rgb.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must match the image's (height, width) {rgb.shape[:2]}")
    values = labels.numpy()
    labelled = numpy.ones(values.shape, dtype=bool) if ignore_index is None else values != ignore_index
    present = sorted(int(v) for v in numpy.unique(values[labelled]))
    if present and present[0] < 0:
        raise ValueError(f"labels must be non-negative (or ignore_index {ignore_index}), got {present[0]}")
    colours = numpy.asarray(palette(present[-1] + 1 if present else 0), dtype=numpy.float64).reshape(-1, 3)
    blended = rgb.copy()
    blended[labelled] = (1.0 - alpha) * rgb[labelled] + alpha * colours[values[labelled]]
    overlay = image_module.fromarray(numpy.rint(blended).astype(numpy.uint8))

    height, width = values.shape
    font_size = max(12, min(48, round(max(height, width) / 40)))
    font = _font(font_size)
    pad = max(2, font_size // 3)
    row = font_size + pad
    entries = [(tuple(int(c) for c in colours[label]), names.get(label, str(label))) for label in present]
    text_width = max((font.getlength(name) for _, name in entries), default=0)
    panel_width = int(pad + font_size + pad + text_width + pad) + 1
    canvas = image_module.new(
        "RGB", (width + panel_width, max(height, pad + row * len(entries) + pad)), (255, 255, 255)
    )
    canvas.paste(overlay, (0, 0))
    draw = image_draw.Draw(canvas)
    for index, (colour, name) in enumerate(entries):
        left, top = width + pad, pad + index * row
        draw.rectangle((left, top, left + font_size - 1, top + font_size - 1), fill=colour)
        _, text_top, _, text_bottom = font.getbbox(name)
        text_y = top + (font_size - (text_bottom - text_top)) / 2 - text_top
        draw.text((left + font_size + pad, text_y), name, fill=(0, 0, 0), font=font)
    return canvas


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, every submodule's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def predict_images(
    model: nn.Module,
    preprocessing: SegmentationPreprocessing,
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> tuple[list[Path], list[str]]:
    """Segment each image file into `output_dir`: `<stem>_labels.png` and `<stem>_overlay.png`.

    The logits are resized to each image's original size before the argmax, so both files match
    the input's size. Inputs sharing a stem get `<stem>-1`, `<stem>-2`, ... A file that cannot be
    read is skipped and reported as "path: reason". The model is moved to `device` and run in eval
    mode without gradients; its training mode is restored afterwards. `progress` may wrap the paths
    (as `progress(paths, description, total)`, e.g. `focalnet.cli.progress`).

    Returns the written files (labels then overlay, per image) and the reasons for skipped files.
    """
    config = model.config
    names = {int(label): name for label, name in config.id2label.items()}
    output = Path(output_dir)
    written: list[Path] = []
    skipped: list[str] = []
    used: set[str] = set()
    model.to(device)
    items = progress(paths, "segmenting", len(paths)) if progress is not None else paths
    with _eval_mode(model):
        for path in items:
            try:
                image = load_image(path)
            except (OSError, ValueError) as error:
                skipped.append(f"{path}: {error}")
                continue
            pixel_values = preprocessing(image).unsqueeze(0).to(device)
            logits = predict_logits(model, pixel_values, (image.height, image.width), window, stride)
            labels = logits.argmax(dim=1)[0].cpu()
            stem = unique_stem(Path(path).stem, used)
            written.append(save_label_map(labels, output / f"{stem}_labels.png", config.num_labels))
            overlay_path = output / f"{stem}_overlay.png"
            with atomic_path(overlay_path) as tmp:
                draw_overlay(image, labels, names, ignore_index=None).save(tmp, format="PNG")
            written.append(overlay_path)
    return written, skipped
