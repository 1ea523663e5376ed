"""Semantic segmentation data in the ADE20K layout, and mmsegmentation's training augmentation
written with torchvision's transforms v2 and `tv_tensors.Mask`.

    DIR/images/training/*.jpg|png       DIR/annotations/training/<stem>.png     (label maps)
    DIR/images/validation/...           DIR/annotations/validation/...
    DIR/labels.txt                      (class names, one per line, in label order)

Label maps hold class indices 0..K-1 and 255 ("ignore"). `reduce_labels` (ADE20K's convention)
turns 0 ("other") into 255 and shifts the rest down by one. An image without a label map, or with
one of another size, is skipped when loaded (counted by the engine; the missing ones are also
counted in one warning up front); a label outside 0..K-1 that is not 255 stops the run with an
error naming the file and the value.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..training.data import ImageFile, seeded
from .inference import SegmentationPreprocessing, fit_scale

IGNORE_INDEX = 255
SPLIT_DIRECTORIES = {"train": "training", "val": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABELS_FILE = "labels.txt"
CROP_TRIES = 10


class LabelError(ValueError):
    """A label map that cannot be used: the message names the file and the problem."""


def _v2():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except ImportError as error:
        raise ImportError("segmentation data needs torchvision: pip install 'focalnet[segmentation]'") from error
    return v2, tv_tensors


# ------------------------------------------------------------------------------------------------
# Finding the files
@dataclass
class SegmentationSplit:
    """The (image, label map) file pairs of one split; `labels[i]` may not exist (skipped when loaded).

    `SegmentationDataset` reads any split through `name`, `image_loader` and `label_map`, which Hugging
    Face rows and shard samples (`focalnet.training.rows.RowPairs`) provide as well."""

    images: list[Path]
    labels: list[Path]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def missing(self) -> int:
        return sum(not path.is_file() for path in self.labels)

    def name(self, index: int) -> str:
        return str(self.images[index])

    def image_loader(self, index: int) -> ImageFile:
        """Reads the RGB image; OSError or ValueError when it cannot be read (the sample is skipped)."""
        return ImageFile(self.images[index])

    def label_map(self, index: int, num_labels: int, reduce_labels: bool = False) -> torch.Tensor:
        """The checked label map; FileNotFoundError where there is none (the sample is skipped)."""
        path = self.labels[index]
        if not path.is_file():
            raise FileNotFoundError(f"no label map {path}")
        return read_label_map(path, num_labels, reduce_labels)


def find_split(root: str | os.PathLike, split: str) -> SegmentationSplit:
    """The pairs of `split` ("train" or "val") of an ADE20K-layout `root`, sorted by file name."""
    root = Path(root)
    name = SPLIT_DIRECTORIES.get(split, split)
    image_dir, label_dir = root / "images" / name, root / "annotations" / name
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{root} is not an ADE20K-layout dataset: {image_dir} does not exist "
            f"(expected images/{name}/ and annotations/{name}/ with label maps of the same stem)"
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    found = SegmentationSplit(images, [label_dir / f"{p.stem}.png" for p in images])
    if found.missing:
        warnings.warn(
            f"{found.missing} of {len(found)} images in {image_dir} have no label map in {label_dir}; "
            "they will be skipped",
            stacklevel=2,
        )
    return found


def read_class_names(root: str | os.PathLike) -> list[str]:
    """The class names of `root/labels.txt`, one per line in label order (blank lines ignored)."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no class names for {root}: write {path} (one name per line, in label order) "
            "or give them with --set class_names=[...]"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names


def read_label_map(path: Path, num_labels: int, reduce_labels: bool = False) -> torch.Tensor:
    """A label map as an int64 (H, W) tensor, reduced if asked, its values checked."""
    import numpy
    from PIL import Image

    try:
        with Image.open(path) as image:
            values = numpy.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise LabelError(f"cannot read the label map {path} ({error})") from None
    return label_tensor(values, path, num_labels, reduce_labels)


def label_tensor(values: Any, path: Any, num_labels: int, reduce_labels: bool = False) -> torch.Tensor:
    """Label values (an (H, W) array of class indices, from `path`) as an int64 tensor, reduced if asked,
    checked: LabelError names `path` for colour maps and labels outside the classes."""
    import numpy

    if values.ndim != 2:
        channels = values.shape[2] if values.ndim == 3 else values.ndim
        raise LabelError(
            f"{path} has {channels} channels; label maps are single-channel PNGs (mode L or P) of class indices"
        )
    labels = torch.from_numpy(values.astype(numpy.int64))
    if reduce_labels:
        labels = torch.where(labels == 0, IGNORE_INDEX, labels - 1)
        labels[labels == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays 255
    wrong = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_labels))]
    if wrong.numel():
        raise LabelError(
            f"{path} holds label {int(wrong[0])}, outside 0..{num_labels - 1} and not {IGNORE_INDEX} (ignored)"
            + ("" if reduce_labels else "; if 0 means 'other' (as in ADE20K), set reduce_labels: true")
            + f"; check the class names ({num_labels})"
        )
    return labels


# ------------------------------------------------------------------------------------------------
# Augmentation (mmsegmentation's ADE20K pipeline)
class RandomRescale:
    """Rescale to fit `scale` times a random ratio in `ratio_range`, keeping the aspect ratio: the
    multi-scale step of mmsegmentation (scale (2048, 512), ratio 0.5-2.0). Labels use nearest."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float]) -> None:
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))

    def __call__(self, image: Any, mask: Any) -> tuple[Any, Any]:
        v2, _ = _v2()
        low, high = self.ratio_range
        ratio = low + (high - low) * torch.rand(()).item()
        height, width = image.shape[-2:]
        size = list(fit_scale(height, width, (self.scale[0] * ratio, self.scale[1] * ratio)))
        return v2.functional.resize(image, size, antialias=True), v2.functional.resize(mask, size)


class RandomCropWithClassLimit:
    """A random `size` crop (the whole side where the image is smaller) in which no class covers
    more than `max_ratio` of the labelled pixels, tried `CROP_TRIES` times (the last is kept), as
    mmsegmentation's RandomCrop with `cat_max_ratio`."""

    def __init__(self, size: int, max_ratio: float = 0.75) -> None:
        self.size = size
        self.max_ratio = max_ratio

    def __call__(self, image: Any, mask: Any) -> tuple[Any, Any]:
        v2, _ = _v2()
        height, width = mask.shape[-2:]
        for _ in range(CROP_TRIES):
            top = int(torch.randint(max(height - self.size, 0) + 1, ()))
            left = int(torch.randint(max(width - self.size, 0) + 1, ()))
            crop = mask[..., top : top + self.size, left : left + self.size]
            counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten())
            counts = counts[counts > 0]
            if self.max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < self.max_ratio):
                break
        crop_height, crop_width = min(self.size, height), min(self.size, width)
        return (
            v2.functional.crop(image, top, left, crop_height, crop_width),
            v2.functional.crop(mask, top, left, crop_height, crop_width),
        )


def train_transform(
    crop_size: int,
    scale: Sequence[int],
    ratio_range: Sequence[float],
    max_class_ratio: float,
    hflip: float,
    photometric: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]:
    """(PIL image, int64 label map) -> normalised (3, crop, crop) pixels and (crop, crop) labels:
    random rescale, crop with a class limit, flip, photometric distortion, then padding (pixels 0
    after normalisation, labels 255) up to the crop size."""
    v2, tv_tensors = _v2()
    rescale = RandomRescale(scale, ratio_range)
    crop = RandomCropWithClassLimit(crop_size, max_class_ratio)
    flip_and_colour = v2.Compose(
        [v2.RandomHorizontalFlip(hflip)] + ([v2.RandomPhotometricDistort(p=0.5)] if photometric else [])
    )
    finish = v2.Compose(
        [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
    )

    def transform(image: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, mask = v2.functional.to_image(image), tv_tensors.Mask(labels)
        pixels, mask = crop(*rescale(pixels, mask))
        pixels, mask = finish(*flip_and_colour(pixels, mask))
        bottom, right = crop_size - mask.shape[-2], crop_size - mask.shape[-1]
        padding = (0, right, 0, bottom)
        pixels = F.pad(pixels.as_subclass(torch.Tensor), padding, value=0.0)
        return pixels, F.pad(mask.as_subclass(torch.Tensor), padding, value=IGNORE_INDEX)

    return transform


def eval_transform(preprocessing: SegmentationPreprocessing) -> Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]:
    """Pixels resized to the test scale and normalised; labels at the image's own size (predictions are
    resized back to it, as mmsegmentation evaluates)."""

    def transform(image: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return preprocessing(image), labels

    return transform


# ------------------------------------------------------------------------------------------------
# Samples
class SegmentationDataset(Dataset):
    """(pixels, labels) samples addressed by (index, seed); None for an image that is unreadable, has
    no label map, or a label map of another size (each with a warning; the engine counts them)."""

    def __init__(
        self,
        split: SegmentationSplit,
        num_labels: int,
        transform: Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        reduce_labels: bool = False,
    ) -> None:
        self.split = split
        self.num_labels = num_labels
        self.transform = transform
        self.reduce_labels = reduce_labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        index, seed = item
        name = self.split.name(index)
        try:
            labels = self.split.label_map(index, self.num_labels, self.reduce_labels)
        except LabelError:
            raise
        except (OSError, ValueError) as error:  # no label map, or a broken one in a row
            warnings.warn(f"skipping {name}: {error}", stacklevel=1)
            return None
        try:
            image = self.split.image_loader(index)()
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping unreadable image {name}: {error}", stacklevel=1)
            return None
        if tuple(labels.shape) != (image.height, image.width):
            warnings.warn(
                f"skipping {name}: it is {image.width}x{image.height}, its label map "
                f"is {labels.shape[1]}x{labels.shape[0]}",
                stacklevel=1,
            )
            return None
        return seeded(seed, self.transform, image, labels)


def collate_segmentation(samples: list[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The readable samples as two lists (validation images keep their own sizes); the third item
    counts the unreadable samples dropped."""
    good = [sample for sample in samples if sample is not None]
    return [pixels for pixels, _ in good], [labels for _, labels in good], len(samples) - len(good)
