"""COCO-layout detection data: reading and checking annotations, samples as torchvision expects them.

A dataset directory holds `train/`, `val/` (or `train2017/`, `val2017/`) and
`annotations/instances_<split>.json` (or `instances_<split>2017.json`). Sparse category ids map
to contiguous labels 1..K (0 is the background) in the order of their ids, and back.

Nothing in the annotations stops a run: a file that is not valid COCO is an error naming the
file and the problem before training starts; boxes reaching outside their image are clipped,
boxes without area dropped, both counted in one warning; a missing or unreadable image is
skipped when loaded (and counted by the engine). Crowd regions are left out of training targets,
as torchvision's references do (COCOeval treats them as "ignore" at evaluation).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..image_processing import load_image
from ..training.data import seeded

SPLIT_ALIASES = {"train": ("train", "train2017"), "val": ("val", "val2017")}


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError as error:
        raise ImportError("instance masks need pycocotools: pip install 'focalnet[detection]'") from error
    return mask


def _v2():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except ImportError as error:
        raise ImportError("detection data needs torchvision: pip install 'focalnet[detection]'") from error
    return v2, tv_tensors


# ------------------------------------------------------------------------------------------------
# Finding a split
def find_split(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(annotations JSON, image directory) of `split` ("train" or "val") in a COCO-layout `root`."""
    root = Path(root)
    names = SPLIT_ALIASES.get(split, (split,))
    annotations = [root / "annotations" / f"instances_{name}.json" for name in names]
    images = [root / name for name in names]
    found_annotations = next((p for p in annotations if p.is_file()), None)
    found_images = next((p for p in images if p.is_dir()), None)
    if found_annotations is None or found_images is None:
        looked = ", ".join(str(p) for p in [*annotations, *images])
        raise FileNotFoundError(
            f"{root} is not a COCO-layout dataset with a {split} split (looked for {looked}); "
            f"pass --{split}-annotations and --{split}-images for other layouts"
        )
    return found_annotations, found_images


# ------------------------------------------------------------------------------------------------
# Reading and checking annotations
@dataclass
class ImageRecord:
    """One image and its annotations, boxes already clipped (xyxy) and checked."""

    id: int
    path: Path
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    segmentations: list[Any] = field(default_factory=list)
    areas: list[float | None] = field(default_factory=list)
    """Each annotation's `area` as given (None where it has none)."""
    loader: Callable[[], Any] | None = None
    """Reads the image where it is not a file of its own (a Hugging Face row, a member of a shard);
    None: the file at `path`."""

    def load(self) -> Any:
        """The image as an RGB PIL image; OSError or ValueError when it cannot be read."""
        return self.loader() if self.loader is not None else load_image(self.path)


@dataclass
class CocoAnnotations:
    """A COCO instances file, read and checked: its images and its categories in label order."""

    path: Path
    images: list[ImageRecord]
    categories: list[dict[str, Any]]
    clipped: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def label_to_category(self) -> list[int]:
        return [0] + [int(c["id"]) for c in self.categories]

    def warn_adjusted(self) -> None:
        """One warning counting the clipped and the dropped boxes, if any."""
        if self.clipped or self.dropped:
            warnings.warn(
                f"{self.path}: {self.clipped} boxes reaching outside their image were clipped, "
                f"{self.dropped} boxes without area (after clipping) dropped",
                stacklevel=3,
            )


class AnnotationError(ValueError):
    """An annotations file that is not valid COCO; the message names the file and the problem."""


def _require(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise AnnotationError(f"{path}: {problem}; fix the annotations file (COCO instances format)")


def _number_list(value: Any, length: int | None = None) -> bool:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotations file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path} is not UTF-8 text: {error}") from None


def _check_categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    categories = []
    for entry in data["categories"]:
        _require(
            isinstance(entry, dict) and isinstance(entry.get("id"), int) and "name" in entry,
            path,
            f"category {entry!r} needs an integer 'id' and a 'name'",
        )
        categories.append({"id": entry["id"], "name": str(entry["name"])})
    ids = [c["id"] for c in categories]
    _require(len(set(ids)) == len(ids), path, f"category ids repeat: {sorted(ids)}")
    _require(bool(categories), path, "no categories")
    return sorted(categories, key=lambda c: c["id"])


def _check_images(data: dict[str, Any], path: Path, image_dir: Path) -> dict[int, ImageRecord]:
    images: dict[int, ImageRecord] = {}
    for entry in data["images"]:
        ok = isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("file_name"), str)
        _require(ok, path, f"image {str(entry)[:120]} needs an integer 'id' and a 'file_name'")
        size = (entry.get("width"), entry.get("height"))
        _require(
            all(isinstance(v, int) and v > 0 for v in size),
            path,
            f"image {entry['id']} needs positive integer 'width' and 'height'",
        )
        _require(entry["id"] not in images, path, f"image id {entry['id']} appears twice")
        images[entry["id"]] = ImageRecord(entry["id"], image_dir / entry["file_name"], *size)
    return images


def read_annotations(path: str | os.PathLike, image_dir: str | os.PathLike) -> CocoAnnotations:
    """Read and check a COCO instances file. Structural problems raise `AnnotationError`; boxes
    reaching outside their image are clipped and boxes without area dropped, counted in one warning."""
    path, image_dir = Path(path), Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image directory {image_dir} does not exist")
    annotations = parse_annotations(_read_json(path), path, image_dir)
    annotations.warn_adjusted()
    return annotations


def parse_annotations(data: Any, path: Path, image_dir: Path) -> CocoAnnotations:
    """Check COCO instances data (from the file `path`, or built from other sources and named by
    `path`); images are `image_dir / file_name`. Structural problems raise `AnnotationError`; boxes
    reaching outside their image are clipped and boxes without area dropped (counted, not warned)."""
    _require(isinstance(data, dict), path, "the top level must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data.get(key), list), path, f"'{key}' must be a list")
    categories = _check_categories(data, path)
    label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    images = _check_images(data, path, image_dir)
    clipped = dropped = 0
    for entry in data["annotations"]:
        _require(isinstance(entry, dict), path, f"annotation {entry!r} is not an object")
        where = f"annotation {entry.get('id', '?')}"
        image_id = entry.get("image_id")
        _require(image_id in images, path, f"{where} refers to image {image_id!r}, which is not listed")
        _require(
            entry.get("category_id") in label_of,
            path,
            f"{where} has category {entry.get('category_id')!r}, not among {sorted(label_of)}",
        )
        _require(_number_list(entry.get("bbox"), 4), path, f"{where} needs 'bbox' as [x, y, width, height]")
        image = images[entry["image_id"]]
        x, y, w, h = entry["bbox"]
        box = [min(max(x, 0), image.width), min(max(y, 0), image.height)]
        box += [min(max(x + w, 0), image.width), min(max(y + h, 0), image.height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            continue
        clipped += box != [x, y, x + w, y + h]
        image.boxes.append(box)
        image.labels.append(label_of[entry["category_id"]])
        image.crowd.append(bool(entry.get("iscrowd", 0)))
        image.segmentations.append(entry.get("segmentation"))
        image.areas.append(entry.get("area"))
    return CocoAnnotations(path, sorted(images.values(), key=lambda r: r.id), categories, clipped, dropped)


def one_image(
    image: dict[str, Any], annotations: Any, categories: list[dict[str, Any]], name: str, loader: Callable[[], Any]
) -> CocoAnnotations:
    """One image's COCO entry and annotations (a Hugging Face row, a shard's `json`), checked as a file's
    would be; annotations without an `image_id` belong to the image. The record reads its image with `loader`."""
    if isinstance(annotations, list):
        annotations = [{"image_id": image.get("id"), **a} if isinstance(a, dict) else a for a in annotations]
    data = {"images": [{**image, "file_name": name}], "annotations": annotations, "categories": categories}
    parsed = parse_annotations(data, Path(name), Path())
    parsed.images[0].loader = loader
    return parsed


# ------------------------------------------------------------------------------------------------
# Records as COCO data again (ground truth and shards, where the data has no instances file)
def record_instances(record: ImageRecord, label_to_category: Sequence[int], first_id: int = 1) -> list[dict[str, Any]]:
    """The annotations of `record` as COCO dicts numbered from `first_id`: boxes as kept (clipped,
    [x, y, width, height]), the dataset's category ids, crowd flags, segmentations, areas as given
    (else the box's)."""
    entries = []
    for n, (box, label, crowd, segmentation, area) in enumerate(
        zip(record.boxes, record.labels, record.crowd, record.segmentations, record.areas, strict=True)
    ):
        x1, y1, x2, y2 = box
        entry = {
            "id": first_id + n,
            "image_id": record.id,
            "category_id": label_to_category[label],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": area if area is not None else (x2 - x1) * (y2 - y1),
            "iscrowd": int(crowd),
        }
        if segmentation:
            entry["segmentation"] = segmentation
        entries.append(entry)
    return entries


def instances(annotations: CocoAnnotations) -> dict[str, Any]:
    """The records as COCO instances data: the ground truth COCOeval scores against where the data has
    no instances file of its own (Hugging Face datasets, shards)."""
    images, entries = [], []
    for record in annotations.images:
        images.append({"id": record.id, "file_name": str(record.path), "width": record.width, "height": record.height})
        entries += record_instances(record, annotations.label_to_category, len(entries) + 1)
    return {"images": images, "annotations": entries, "categories": annotations.categories}


# ------------------------------------------------------------------------------------------------
# Samples
def instance_masks(record: ImageRecord, keep: Sequence[int]) -> torch.Tensor:
    """(N, H, W) uint8 masks of the annotations `keep` (polygons or RLE, via pycocotools)."""
    mask_utils = _pycocotools_mask()
    masks = torch.zeros(len(keep), record.height, record.width, dtype=torch.uint8)
    for row, index in enumerate(keep):
        segmentation = record.segmentations[index]
        if not segmentation:
            raise ValueError(f"annotation {index} of image {record.id} has no segmentation")
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, record.height, record.width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, record.height, record.width)
        else:
            rle = segmentation
        masks[row] = torch.from_numpy(mask_utils.decode(rle))
    return masks


def train_transform(scales: Sequence[float], max_size: int, hflip: float, random_crop: float) -> Callable:
    """Flip, optional random crop, multi-scale resize of the shorter side (capped at `max_size`), then
    float pixels in [0, 1]; boxes left without area are removed with their labels and masks."""
    v2, _ = _v2()
    steps: list[Any] = [v2.ToImage()]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if random_crop:
        steps += [v2.RandomApply([v2.RandomIoUCrop()], p=random_crop), v2.SanitizeBoundingBoxes()]
    steps += [
        v2.RandomShortestSize([int(s) for s in scales], max_size=max_size, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(),
    ]
    return v2.Compose(steps)


def eval_transform() -> Callable:
    """Float pixels in [0, 1] at the image's own size: the detector resizes (and maps boxes back)."""
    v2, _ = _v2()
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class CocoDetection(Dataset):
    """(image, target) samples addressed by (index, seed), as the engine's sampler gives them.

    The target holds torchvision's fields (`boxes` xyxy, `labels`, and `masks` when `with_masks`),
    `image_id` and the sample's `seed`; crowd regions are left out. An unreadable image gives None (with a warning).
    """

    def __init__(self, annotations: CocoAnnotations, transform: Callable, with_masks: bool = False) -> None:
        self.annotations = annotations
        self.transform = transform
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.annotations.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]] | None:
        index, seed = item
        record = self.annotations.images[index]
        try:
            image = record.load()
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping unreadable image {record.path}: {error}", stacklevel=1)
            return None
        if image.size != (record.width, record.height):
            warnings.warn(
                f"skipping {record.path}: it is {image.size[0]}x{image.size[1]}, the annotations say "
                f"{record.width}x{record.height}",
                stacklevel=1,
            )
            return None
        target = {**self.target(record), "seed": seed}
        return seeded(seed, self.transform, image, target)

    def target(self, record: ImageRecord) -> dict[str, Any]:
        _, tv_tensors = _v2()
        keep = [i for i, crowd in enumerate(record.crowd) if not crowd]
        boxes = torch.tensor([record.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(record.height, record.width)),
            "labels": torch.tensor([record.labels[i] for i in keep], dtype=torch.int64),
            "image_id": record.id,
        }
        if self.with_masks:
            target["masks"] = tv_tensors.Mask(instance_masks(record, keep))
        return target


def collate_detection(samples: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, Any]], int]:
    """Readable samples as torchvision's detectors take them: a list of images (any sizes) and a
    list of target dicts; the third item counts the unreadable samples dropped."""
    good = [sample for sample in samples if sample is not None]
    images = [image.as_subclass(torch.Tensor) for image, _ in good]
    targets = [{k: v.as_subclass(torch.Tensor) if torch.is_tensor(v) else v for k, v in t.items()} for _, t in good]
    return images, targets, len(samples) - len(good)


def report_missing(annotations: CocoAnnotations) -> int:
    """Count the listed images that do not exist (each is skipped, and counted, when loaded); warn once."""
    missing = sum(record.loader is None and not record.path.is_file() for record in annotations.images)
    if missing:
        warnings.warn(f"{missing} images listed in {annotations.path} do not exist; they will be skipped", stacklevel=2)
    return missing
