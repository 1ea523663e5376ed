"""Samples kept in rows - a Hugging Face dataset's rows, or a WebDataset sample (the files sharing
one key in a tar shard, as a dict of bytes) - as the records the folder layouts give: loaders of
`LabelledImages`, COCO-style detection records, image and label-map pairs.

Nothing is decoded until the engine loads a sample. A row that cannot be used (no image, a label
outside the classes, broken annotations) becomes a sample whose loading fails with the problem, so
the task's dataset skips it with a warning naming the row, and the engine counts it, as it does an
unreadable image file.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..detection.data import AnnotationError, CocoAnnotations, ImageRecord, one_image
from ..image_processing import decode_image, load_image, to_rgb_image
from ..segmentation.data import label_tensor
from .data import LabelledImages

EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that turn the image by 90 degrees (`load_image` applies them)."""


# ------------------------------------------------------------------------------------------------
# Values as rows hold them
def decode_value(value: Any, name: str) -> Any:
    """An image as a row holds it (encoded bytes, {"bytes", "path"}, a path, a PIL image or an array)
    as an RGB PIL image, read as `load_image` reads files; ValueError names the row otherwise."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return decode_image(value["bytes"], name)
        if value.get("path"):
            return load_image(value["path"])
        raise ValueError(f"{name}: the image holds neither bytes nor a path")
    if isinstance(value, bytes):
        return decode_image(value, name)
    if isinstance(value, str):
        return load_image(value)
    if value is None:
        raise ValueError(f"{name} has no image")
    try:
        return to_rgb_image(value)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None


def encoded_value(value: Any) -> bytes | None:
    """The image's bytes as stored (encoded bytes, or the file a path names), or None for decoded images."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(value, str):
        return Path(value).read_bytes()
    return value if isinstance(value, bytes) else None


def image_size(value: Any, name: str) -> tuple[int, int]:
    """(width, height) of an image as `decode_value` will return it, from its header (EXIF turns applied)."""
    from PIL import Image

    data = encoded_value(value)
    if data is None:
        image = decode_value(value, name)
        return image.width, image.height
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {name} as an image ({error})") from None
    return (height, width) if turned else (width, height)


def mask_values(value: Any, name: str) -> Any:
    """A label map as a row holds it (an encoded image, {"bytes", "path"}, a PIL image, or an array or
    nested lists of class indices) as a numpy array; ValueError names the row when it cannot be read."""
    import numpy
    from PIL import Image

    try:
        data = encoded_value(value)
        if data is None and (value is None or isinstance(value, dict)):
            raise ValueError("there is none")
        if data is None:
            return numpy.asarray(value)
        with Image.open(io.BytesIO(data)) as image:
            return numpy.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read the label map of {name} ({error})") from None


def label_index(value: Any, index_of: Mapping[str, int], name: str) -> int:
    """A row's class as an index: a class name (text), or an index (an integer, or a shard's `cls` bytes)."""
    if isinstance(value, str) and value in index_of:
        return index_of[value]
    try:
        index = int(value) if not isinstance(value, (bool, float)) else -1
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(index_of):
        raise ValueError(f"{name}: label {value!r} is neither a class index below {len(index_of)} nor a class name")
    return index


# ------------------------------------------------------------------------------------------------
# Loaders
@dataclass(frozen=True)
class RowImage:
    """Reads the image column of one row (picklable, for data-loader workers)."""

    rows: Any
    """A `datasets.Dataset` or a sequence of dicts."""
    index: int
    column: str
    name: str

    def __call__(self) -> Any:
        return decode_value(self.rows[self.index][self.column], self.name)

    def encoded(self) -> bytes | None:
        return encoded_value(self.rows[self.index][self.column])


@dataclass(frozen=True)
class Unreadable:
    """Stands for a sample that cannot be used: loading it raises `problem`, so it is skipped and counted."""

    problem: str

    def __call__(self) -> Any:
        raise ValueError(self.problem)


@dataclass
class RowPairs:
    """Image and label-map columns of rows, read as `SegmentationSplit` reads its file pairs."""

    rows: Any
    image_column: str
    label_column: str
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def image_loader(self, index: int) -> RowImage:
        return RowImage(self.rows, index, self.image_column, self.names[index])

    def label_map(self, index: int, num_labels: int, reduce_labels: bool = False) -> torch.Tensor:
        values = mask_values(self.rows[index][self.label_column], self.names[index])
        return label_tensor(values, self.names[index], num_labels, reduce_labels)


# ------------------------------------------------------------------------------------------------
# One row -> a one-sample source of the task's kind (streamed rows)
@dataclass(frozen=True)
class LabelledRows:
    """A row as a one-image `LabelledImages`: classification, or masked image modeling (`label` None)."""

    image: str
    label: str | None
    classes: list[str]

    @functools.cached_property
    def index_of(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def __call__(self, row: Mapping[str, Any], name: str) -> LabelledImages:
        loader: Any = RowImage((row,), 0, self.image, name)
        label = 0
        if self.label is not None:
            try:
                label = label_index(row.get(self.label), self.index_of, name)
            except ValueError as error:
                loader = Unreadable(str(error))
        return LabelledImages([loader], [label], self.classes, [name])


@dataclass(frozen=True)
class SegmentationRows:
    """A row as a one-pair split of an image and its label map."""

    image: str
    label: str

    def __call__(self, row: Mapping[str, Any], name: str) -> RowPairs:
        return RowPairs((row,), self.image, self.label, [name])


@dataclass(frozen=True)
class DetectionRows:
    """A row as a one-image `CocoAnnotations`, checked as an instances file is.

    Two layouts: Hugging Face's (cppe-5: `image_id`, optional `width` and `height`, and `objects`
    holding `bbox` [x, y, width, height] in pixels, the category under `category_field`, and optional
    `area`, `id`, `iscrowd`, `segmentation`), and a shard's `json` (the image's COCO annotations:
    {"image_id", "width", "height", "annotations": [...]})."""

    image: str
    categories: list[dict[str, Any]]
    category_field: str = "category"

    def __call__(
        self, row: Mapping[str, Any], name: str, fallback_id: int | None = None, loader: Any = None
    ) -> CocoAnnotations:
        """`fallback_id` is the image id where the row has none; `loader` reads the image (default: from the row)."""
        loader = loader or RowImage((row,), 0, self.image, name)
        try:
            fields = json.loads(row["json"]) if "json" in row else row
            annotations = fields["annotations"] if "json" in row else objects_as_coco(fields, self.category_field)
            image_id = fields.get("image_id", fallback_id)
            if not isinstance(image_id, int):
                raise ValueError(f"an integer image_id is needed, got {image_id!r}")
            if fields.get("width") is not None and fields.get("height") is not None:
                width, height = fields["width"], fields["height"]
            else:
                width, height = image_size(row[self.image], name)
            entry = {"id": image_id, "width": width, "height": height}
            return one_image(entry, annotations, self.categories, name, loader)
        except (AnnotationError, ValueError, KeyError, TypeError, AttributeError) as error:
            problem = f"{name}: unusable annotations ({type(error).__name__}: {error})"
            record = ImageRecord(-1 - (fallback_id or 0), Path(name), 1, 1)  # (no valid COCO id is negative)
            record.loader = Unreadable(problem)
            return CocoAnnotations(Path(name), [record], self.categories)


def objects_as_coco(row: Mapping[str, Any], category_field: str) -> list[dict[str, Any]]:
    """A Hugging Face row's `objects` (a struct of lists, or a list of structs) as COCO annotation dicts."""
    objects = row["objects"]
    if isinstance(objects, Mapping):
        objects = [dict(zip(objects, values, strict=True)) for values in zip(*objects.values(), strict=True)]
    annotations = []
    for number, found in enumerate(objects):
        entry = {"id": found.get("id", number), "bbox": found["bbox"], "category_id": found[category_field]}
        entry.update({key: found[key] for key in ("area", "iscrowd", "segmentation") if found.get(key) is not None})
        annotations.append(entry)
    return annotations
