"""A small, seeded, synthetic detection / segmentation dataset in COCO or ADE20K layout.

`make_shapes_dataset` draws circles, squares and triangles on textured backgrounds and writes them
with COCO annotations (detection, instance segmentation) or as ADE20K-style label maps (semantic
segmentation), so tests, docs and the one-command demo have data without a download. A
FocalNet Faster R-CNN / Mask R-CNN learns it in minutes on a CPU: the shapes have a clear contrast
with what lies under them, while the backgrounds (gradients, stripes, checkerboards, noise) keep the
task from being trivial.

* Every shape is drawn with `ImageDraw.polygon` from exactly the polygon written as its
  `segmentation`, so pycocotools' `annToMask` matches the drawn pixels to within one pixel along the
  edges (Pillow fills every pixel an edge touches, COCO the pixels whose centre lies inside). Shapes
  never touch, so no mask includes pixels hidden by another shape.
* Category ids are sparse (1, 3, 7) on purpose, to exercise the mapping to contiguous labels.
* The ADE20K layout writes the same scenes (same seed and arguments, byte-identical images) with a
  mode-L label map per image: 0 background, then 1, 2, 3 for circle, square, triangle
  (`ADE20K_CLASSES`). Each shape's label covers exactly the pixels drawn for it: those Pillow fills
  for its polygon and, for an outlined shape, those of the outline (which can lie one pixel outside
  them). Only the writing differs between layouts, never the random streams.
* Everything comes from `seed`; train and val use separate random streams, so changing
  `val_images` leaves the training split as it was. Same seed, same bytes.

Pillow and numpy come from the `detection` extra; the module itself imports without them.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from .._io import atomic_path, atomic_write

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["ADE20K_CLASSES", "CATEGORIES", "LAYOUTS", "make_shapes_dataset"]

CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]
# the ADE20K layout's class names in label order: background is 0, then CATEGORIES in order
ADE20K_CLASSES: tuple[str, ...] = ("background", *(category["name"] for category in CATEGORIES))
_ADE20K_LABELS = {category["id"]: label for label, category in enumerate(CATEGORIES, start=1)}
_ADE20K_FOLDERS = {"train": "training", "val": "validation"}

_MIN_IMAGE_SIDE = 64
_MIN_SHAPE_SIZE = 24.0  # diameter of a circle, side of a square or triangle, in pixels
_MAX_SHAPE_FRACTION = 0.45  # of the shorter image side
_MAX_SQUARE_TILT = math.radians(15.0)
_CIRCLE_VERTICES = 32
_MAX_BOX_IOU = 0.2
_PLACEMENT_TRIES = 30
_SHAPE_GAP = 2  # pixels kept free around each placed shape
_EDGE_MARGIN = 0.5  # keeps polygons (and Pillow's inclusive fill) strictly inside the image
_EMPTY_FRACTION = 0.03
_MIN_EMPTY_SPLIT = 10
_MIN_CONTRAST = 80.0  # luminance difference, out of 255, between a fill and the mean under its box
_COLOUR_TRIES = 20
_OUTLINE_PROBABILITY = 0.5
_MIX_PROBABILITY = 0.3
_LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


# ------------------------------------------------------------------------------------------------
# optional dependencies and arguments
def _vision() -> tuple[ModuleType, ModuleType, ModuleType]:
    """numpy, Pillow's `Image` and `ImageDraw`, or an ImportError that names the extra."""
    try:
        import numpy
        from PIL import Image, ImageDraw
    except ImportError:
        raise ImportError(
            "focalnet.detection.synthetic needs Pillow and numpy: pip install 'focalnet[detection]'"
        ) from None
    return numpy, Image, ImageDraw


def _check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int, or a ValueError unless it is an integer >= `minimum`."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# ------------------------------------------------------------------------------------------------
# backgrounds: float (H, W, 3) arrays in [0, 255]
def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two related colours: a mid-range base and a neighbour, so textures stay visible but moderate."""
    numpy, _, _ = _vision()
    base = rng.uniform(30.0, 225.0, size=3)
    other = numpy.clip(base + rng.uniform(-70.0, 70.0, size=3), 0.0, 255.0)
    return base.astype(numpy.float32), other.astype(numpy.float32)


def _blend(first: np.ndarray, second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`first` where `weight` is 0, `second` where it is 1, per pixel."""
    return first + weight[..., None] * (second - first)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x coordinates as a (1, W) row and y coordinates as an (H, 1) column, to broadcast."""
    numpy, _, _ = _vision()
    return numpy.arange(width, dtype=numpy.float32)[None, :], numpy.arange(height, dtype=numpy.float32)[:, None]


def _ramp(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Each pixel's position along a random direction, in pixels."""
    xs, ys = _grid(width, height)
    angle = rng.uniform(0.0, math.pi)
    return xs * math.cos(angle) + ys * math.sin(angle)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    first, second = _colour_pair(rng)
    ramp = _ramp(rng, width, height)
    ramp = ramp - ramp.min()
    return _blend(first, second, ramp / max(float(ramp.max()), 1.0))


def _stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    first, second = _colour_pair(rng)
    period = rng.uniform(6.0, 40.0)
    return _blend(first, second, (_ramp(rng, width, height) / period) % 1.0 < 0.5)


def _checkerboard(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    first, second = _colour_pair(rng)
    cell = int(rng.integers(6, 33))
    shift_x, shift_y = (int(s) for s in rng.integers(0, cell, size=2))
    xs, ys = _grid(width, height)
    return _blend(first, second, ((xs + shift_x) // cell + (ys + shift_y) // cell) % 2)


def _noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    numpy, _, _ = _vision()
    base = rng.uniform(30.0, 225.0, size=3).astype(numpy.float32)
    sigma = numpy.float32(rng.uniform(8.0, 30.0))
    return base + sigma * rng.standard_normal(size=(height, width, 3), dtype=numpy.float32)


_TEXTURES: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _gradient,
    _stripes,
    _checkerboard,
    _noise,
)


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return _TEXTURES[int(rng.integers(len(_TEXTURES)))](rng, width, height)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One random texture, or two blended, as a uint8 (H, W, 3) image."""
    numpy, _, _ = _vision()
    pixels = _texture(rng, width, height)
    if rng.random() < _MIX_PROBABILITY:
        alpha = numpy.float32(rng.uniform(0.3, 0.7))
        pixels = alpha * pixels + (1.0 - alpha) * _texture(rng, width, height)
    return numpy.clip(pixels, 0.0, 255.0).round().astype(numpy.uint8)


# ------------------------------------------------------------------------------------------------
# shapes: polygons as (N, 2) arrays of (x, y), centred on the origin until placed
class _Shape(NamedTuple):
    """One drawn shape: its category id, its flat [x1, y1, x2, y2, ...] polygon, and whether it has an outline."""

    category_id: int
    polygon: list[float]
    outlined: bool


def _regular_polygon(vertices: int, radius: float, phase: float) -> np.ndarray:
    numpy, _, _ = _vision()
    angles = phase + numpy.arange(vertices) * (2.0 * math.pi / vertices)
    return radius * numpy.stack([numpy.cos(angles), numpy.sin(angles)], axis=1)


def _shape(rng: np.random.Generator, name: str, size: float) -> np.ndarray:
    """A circle of diameter `size`, a square or an equilateral triangle of side `size`."""
    if name == "circle":
        return _regular_polygon(_CIRCLE_VERTICES, size / 2.0, rng.uniform(0.0, 2.0 * math.pi / _CIRCLE_VERTICES))
    if name == "square":
        tilt = 0.0 if rng.random() < 0.5 else rng.uniform(-_MAX_SQUARE_TILT, _MAX_SQUARE_TILT)
        return _regular_polygon(4, size / math.sqrt(2.0), math.pi / 4.0 + tilt)
    return _regular_polygon(3, size / math.sqrt(3.0), rng.uniform(0.0, 2.0 * math.pi))


def _box_iou(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    inter_w = min(first[2], second[2]) - max(first[0], second[0])
    inter_h = min(first[3], second[3]) - max(first[1], second[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return inter / (area - inter)


def _extent(polygon: list[float]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a flat [x1, y1, x2, y2, ...] polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _points(polygon: list[float]) -> list[tuple[float, float]]:
    """A flat [x1, y1, x2, y2, ...] polygon as the (x, y) pairs Pillow draws."""
    return list(zip(polygon[0::2], polygon[1::2], strict=True))


def _footprint(width: int, height: int, polygon: list[float], grow: int = 0, outline: bool = False) -> np.ndarray:
    """The pixels Pillow fills for `polygon`, grown outwards by `grow` pixels, as a bool (H, W) array.

    With `outline`, also the pixels of the 1-pixel outline Pillow draws over it, which can lie one
    pixel outside the filled ones: together, exactly the pixels `_render_image` draws for the shape.
    """
    numpy, image_module, image_draw = _vision()
    mask = image_module.new("L", (width, height), 0)
    draw = image_draw.Draw(mask)
    points = _points(polygon)
    draw.polygon(points, fill=255)
    if outline:
        draw.polygon(points, outline=255)
    if grow:
        draw.line([*points, points[0]], fill=255, width=2 * grow + 1, joint="curve")
    return numpy.asarray(mask) > 0


def _place_shape(
    rng: np.random.Generator, width: int, height: int, boxes: list[tuple[float, ...]], taken: np.ndarray
) -> tuple[dict, list[float]] | None:
    """A random category and its flat polygon inside the image, or None if no room was found.

    The polygon's box has an IoU <= `_MAX_BOX_IOU` with each of `boxes`, and its pixels avoid `taken`
    (earlier shapes grown by a gap), so shapes never occlude each other.
    """
    numpy, _, _ = _vision()
    max_size = _MAX_SHAPE_FRACTION * min(width, height)
    limit = numpy.array([width, height]) - 1.0 - _EDGE_MARGIN
    for _ in range(_PLACEMENT_TRIES):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        points = _shape(rng, category["name"], rng.uniform(_MIN_SHAPE_SIZE, max_size))
        low, high = points.min(axis=0), points.max(axis=0)
        offset = rng.uniform(_EDGE_MARGIN - low, limit - high)
        polygon = (points + offset).round(2).ravel().tolist()
        box = _extent(polygon)
        if (
            all(_box_iou(box, other) <= _MAX_BOX_IOU for other in boxes)
            and not (taken & _footprint(width, height, polygon)).any()
        ):
            return category, polygon
    return None


def _luminance(rgb: np.ndarray) -> np.ndarray:
    numpy, _, _ = _vision()
    return numpy.asarray(rgb, dtype=numpy.float64) @ numpy.asarray(_LUMINANCE_WEIGHTS)


def _contrasting_colour(rng: np.random.Generator, pixels: np.ndarray, box: tuple[float, ...]) -> tuple[int, int, int]:
    """A random colour whose luminance differs by >= `_MIN_CONTRAST` from the mean of `pixels` under `box`.

    Falls back to black or white, one of which always qualifies, when the random tries miss.
    """
    x0, y0, x1, y1 = box
    local = float(_luminance(pixels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].reshape(-1, 3).mean(axis=0)))
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, size=3)
        if abs(float(_luminance(colour)) - local) >= _MIN_CONTRAST:
            return int(colour[0]), int(colour[1]), int(colour[2])
    return (0, 0, 0) if local >= 127.5 else (255, 255, 255)


def _render_image(rng: np.random.Generator, width: int, height: int, objects: int) -> tuple[Image.Image, list[_Shape]]:
    """A textured image with up to `objects` shapes, and each shape as drawn."""
    numpy, image_module, image_draw = _vision()
    image = image_module.fromarray(_background(rng, width, height))
    draw = image_draw.Draw(image)
    shapes: list[_Shape] = []
    boxes: list[tuple[float, ...]] = []
    taken = numpy.zeros((height, width), dtype=bool)
    for _ in range(objects):
        placed = _place_shape(rng, width, height, boxes, taken)
        if placed is None:
            continue
        category, polygon = placed
        box = _extent(polygon)
        fill = _contrasting_colour(rng, numpy.asarray(image), box)
        outline = None
        if rng.random() < _OUTLINE_PROBABILITY:
            grey = int(rng.integers(0, 48))
            outline = (grey, grey, grey)
        draw.polygon(_points(polygon), fill=fill, outline=outline)
        shapes.append(_Shape(category["id"], polygon, outline is not None))
        boxes.append(box)
        taken |= _footprint(width, height, polygon, grow=_SHAPE_GAP)
    return image, shapes


# ------------------------------------------------------------------------------------------------
# annotations, label maps and splits
def _polygon_area(polygon: list[float]) -> float:
    """Shoelace area of a flat [x1, y1, x2, y2, ...] polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    twice = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
    return abs(twice) / 2.0


def _annotation(annotation_id: int, image_id: int, category_id: int, polygon: list[float]) -> dict:
    x0, y0, x1, y1 = _extent(polygon)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [polygon],
        "area": round(_polygon_area(polygon), 2),
        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
        "iscrowd": 0,
    }


def _label_map(width: int, height: int, shapes: list[_Shape]) -> Image.Image:
    """A mode-L label map: each shape's contiguous label on exactly the pixels drawn for it, 0 elsewhere."""
    numpy, image_module, _ = _vision()
    labels = numpy.zeros((height, width), dtype=numpy.uint8)
    for shape in shapes:
        labels[_footprint(width, height, shape.polygon, outline=shape.outlined)] = _ADE20K_LABELS[shape.category_id]
    return image_module.fromarray(labels)


def _empty_images(rng: np.random.Generator, count: int) -> set[int]:
    """Indices of the images left without objects: about 3%, at least one once a split has 10 images."""
    if count < _MIN_EMPTY_SPLIT:
        return set()
    chosen = rng.choice(count, size=max(1, round(_EMPTY_FRACTION * count)), replace=False)
    return {int(index) for index in chosen}


class _CocoSplit:
    """COCO layout: root/<split>/*.png and root/annotations/instances_<split>.json."""

    def __init__(self, root: Path, split: str, info: dict) -> None:
        self.root, self.split, self.info = root, split, info
        self.image_dir = root / split
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, image_id: int, file_name: str, image: Image.Image, shapes: list[_Shape]) -> None:
        width, height = image.size
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape in shapes:
            self.annotations.append(_annotation(len(self.annotations) + 1, image_id, shape.category_id, shape.polygon))

    def close(self) -> None:
        coco = {
            "info": {**self.info, "split": self.split},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": CATEGORIES,
        }
        with atomic_write(self.root / "annotations" / f"instances_{self.split}.json") as handle:
            json.dump(coco, handle)

    @staticmethod
    def finish(root: Path) -> None:
        """Nothing beyond the splits."""


class _Ade20kSplit:
    """ADE20K layout: root/images/<folder>/*.png and root/annotations/<folder>/*.png (label maps of the same stem)."""

    def __init__(self, root: Path, split: str, info: dict) -> None:
        folder = _ADE20K_FOLDERS[split]
        self.image_dir = root / "images" / folder
        self.label_dir = root / "annotations" / folder

    def add(self, image_id: int, file_name: str, image: Image.Image, shapes: list[_Shape]) -> None:
        with atomic_path(self.label_dir / file_name) as tmp:
            _label_map(*image.size, shapes).save(tmp, format="PNG", compress_level=1)

    def close(self) -> None:
        self.label_dir.mkdir(parents=True, exist_ok=True)  # an empty split still gets its folder

    @staticmethod
    def finish(root: Path) -> None:
        """root/labels.txt: one class name a line, in label order."""
        with atomic_write(root / "labels.txt") as handle:
            handle.write("".join(f"{name}\n" for name in ADE20K_CLASSES))


_LAYOUTS: dict[str, type[_CocoSplit] | type[_Ade20kSplit]] = {"coco": _CocoSplit, "ade20k": _Ade20kSplit}
LAYOUTS: tuple[str, ...] = tuple(_LAYOUTS)


def _write_split(
    sink: _CocoSplit | _Ade20kSplit,
    count: int,
    rng: np.random.Generator,
    min_side: int,
    max_side: int,
    max_objects: int,
) -> None:
    """Draws one split's scenes from `rng` and writes them through `sink`, the same for every layout.

    The images go to `sink.image_dir` as 000001.png, ...; `sink` writes the annotations of its layout.
    """
    empty = _empty_images(rng, count)
    for index in range(count):
        image_id = index + 1
        width, height = (int(side) for side in rng.integers(min_side, max_side, size=2, endpoint=True))
        objects = 0 if index in empty else int(rng.integers(1, max_objects, endpoint=True))
        image, shapes = _render_image(rng, width, height, objects)
        file_name = f"{image_id:06d}.png"
        with atomic_path(sink.image_dir / file_name) as tmp:
            image.save(tmp, format="PNG", compress_level=1)
        sink.add(image_id, file_name, image, shapes)
    sink.image_dir.mkdir(parents=True, exist_ok=True)  # an empty split still gets its folder
    sink.close()


def make_shapes_dataset(
    root: str | os.PathLike,
    train_images: int = 300,
    val_images: int = 60,
    seed: int = 0,
    min_side: int = 160,
    max_side: int = 256,
    max_objects: int = 4,
    layout: str = "coco",
) -> Path:
    """Writes a synthetic shapes dataset in `layout` ("coco" or "ade20k") under `root`; returns `root` as a Path.

    "coco" files: root/train/*.png, root/val/*.png (named 000001.png, ...),
    root/annotations/instances_train.json and instances_val.json.
    "ade20k" files: root/images/training/*.png, root/images/validation/*.png, label maps of the same
    names in root/annotations/training/ and root/annotations/validation/ (mode L: 0 background,
    1 circle, 2 square, 3 triangle), and root/labels.txt (`ADE20K_CLASSES`, one a line).
    Both layouts draw the same scenes: same arguments, byte-identical images.

    Each image is `min_side`..`max_side` pixels wide and high (drawn separately, so sizes and aspect
    ratios vary), with 1..`max_objects` shapes, except about 3% of the images, which have none. Files
    are written atomically and the output depends only on the arguments: the same seed gives
    byte-identical files. An unknown `layout` raises a ValueError before anything is written.
    """
    train_images = _check_int("train_images", train_images, 1)
    val_images = _check_int("val_images", val_images, 0)
    seed = _check_int("seed", seed, 0)
    min_side = _check_int("min_side", min_side, _MIN_IMAGE_SIDE)
    max_side = _check_int("max_side", max_side, _MIN_IMAGE_SIDE)
    if min_side > max_side:
        raise ValueError(f"min_side ({min_side}) must not exceed max_side ({max_side})")
    max_objects = _check_int("max_objects", max_objects, 1)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    numpy, _, _ = _vision()

    root = Path(root)
    info = {
        "description": "Synthetic circles, squares and triangles on textured backgrounds (focalnet)",
        "seed": seed,
        "min_side": min_side,
        "max_side": max_side,
        "max_objects": max_objects,
    }
    train_stream, val_stream = numpy.random.SeedSequence(seed).spawn(2)
    for split, count, stream in (("train", train_images, train_stream), ("val", val_images, val_stream)):
        rng = numpy.random.default_rng(stream)
        _write_split(_LAYOUTS[layout](root, split, info), count, rng, min_side, max_side, max_objects)
    _LAYOUTS[layout].finish(root)
    return root
