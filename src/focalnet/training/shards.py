"""`focalnet make-shards`: any source the engine reads, written as WebDataset shards plus an `_info.json`.

Each split gets its own numbered series (`train-000000.tar`, ..., `val-000000.tar`, ...), so one brace
pattern names a split. A sample is the files sharing one key: the image as stored (`jpg`, `png` or
`webp`; other formats, and images held decoded, are written as PNG), and `cls` (the class index),
`json` (the image's COCO annotations: image_id, width, height, annotations) or `seg.png` (the label
map, as read: before `reduce_labels`). `_info.json` holds what timm reads (per split: num_samples,
filenames, shard_lengths) and the class names (`classes`) or detection `categories`. Every shard is
written atomically, the info last; samples that cannot be read are left out and counted.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, atomic_write
from .config import TrainConfig
from .data import ImageFile, LabelledImages
from .sources import detection_sources, labelled_sources, segmentation_sources, unlabelled_sources
from .streaming import INFO_NAME, Stream

FORMAT_KEYS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
"""Image formats kept as they are stored, by the key they get in a shard."""
LABEL_LIMIT = 1 << 16
"""Label maps are written as they are read: 8-bit PNGs, or 16-bit where a value exceeds 255."""

Members = dict[str, bytes]


# ------------------------------------------------------------------------------------------------
# Samples as shard members
def image_member(loader: Callable[[], Any]) -> tuple[str, bytes]:
    """(key, bytes) of an image: its stored bytes where the format is one shards keep, else a PNG."""
    from PIL import Image

    encoded = getattr(loader, "encoded", None)
    data = encoded() if encoded is not None else None
    if data is not None:
        try:
            with Image.open(io.BytesIO(data)) as image:
                key = FORMAT_KEYS.get(image.format or "")
        except (OSError, SyntaxError, ValueError):
            key = None
        if key is not None:
            return key, data
    return "png", _png(loader())


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_png(labels: Any) -> bytes:
    """An (H, W) tensor of class indices as a single-channel PNG (8-bit, or 16-bit above 255)."""
    from PIL import Image

    values = labels.numpy()
    wide = values.max(initial=0) > 255
    return _png(Image.fromarray(values.astype("uint16" if wide else "uint8")))


def labelled_members(source: LabelledImages, order: Sequence[int], labelled: bool = True) -> Iterator[Members | None]:
    """Classification (`cls`) or unlabelled samples in `order`; None for one whose image cannot be read."""
    for index in order:
        loader, label = source.loaders[index], source.labels[index]
        yield _guarded(source.names[index], _labelled_member, loader, label, labelled)


def _labelled_member(loader: Callable[[], Any], label: int, labelled: bool) -> Members:
    key, data = image_member(loader)
    return {key: data, "cls": str(label).encode()} if labelled else {key: data}


def detection_members(annotations: Any, order: Sequence[int]) -> Iterator[Members | None]:
    """Detection samples in `order`: the image and its COCO annotations (`json`)."""
    for index in order:
        record = annotations.images[index]
        yield _guarded(str(record.path), _detection_member, record, annotations.label_to_category)


def _detection_member(record: Any, label_to_category: list[int]) -> Members:
    from ..detection.data import record_instances

    key, data = image_member(record.loader or ImageFile(record.path))
    fields = {
        "image_id": record.id,
        "width": record.width,
        "height": record.height,
        "annotations": record_instances(record, label_to_category),
    }
    return {key: data, "json": json.dumps(fields).encode()}


def segmentation_members(split: Any, order: Sequence[int]) -> Iterator[Members | None]:
    """Semantic segmentation samples in `order`: the image and its label map (`seg.png`)."""
    for index in order:
        yield _guarded(split.name(index), _segmentation_member, split, index)


def _segmentation_member(split: Any, index: int) -> Members:
    labels = split.label_map(index, LABEL_LIMIT)
    key, data = image_member(split.image_loader(index))
    return {key: data, "seg.png": label_png(labels)}


def _guarded(name: str, member: Callable[..., Members], *args: Any) -> Members | None:
    """`member(*args)`, or None (with a warning) when the sample cannot be read."""
    try:
        return member(*args)
    except (OSError, ValueError) as error:
        warnings.warn(f"skipping {name}: {error}", stacklevel=2)
        return None


# ------------------------------------------------------------------------------------------------
# Writing
def write_split(directory: Path, split: str, samples: Iterable[Members | None], size: int) -> dict[str, Any]:
    """Numbered tar shards `<split>-000000.tar`, ... of `size` samples each (the last may hold fewer);
    returns the split's entry of _info.json, with the samples that could not be read as `skipped`."""
    skipped = 0

    def readable() -> Iterator[Members]:
        nonlocal skipped
        for sample in samples:
            if sample is None:
                skipped += 1
            else:
                yield sample

    kept = readable()
    filenames: list[str] = []
    lengths: list[int] = []
    for number in itertools.count():
        first = next(kept, None)
        if first is None:
            break
        name = f"{split}-{number:06d}.tar"
        with atomic_path(directory / name) as temporary, tarfile.open(temporary, "w") as tar:
            count = 0
            for sample in itertools.chain([first], itertools.islice(kept, size - 1)):
                _add(tar, f"{sum(lengths) + count:09d}", sample)
                count += 1
        filenames.append(name)
        lengths.append(count)
    return {
        "name": split,
        "num_samples": sum(lengths),
        "filenames": filenames,
        "shard_lengths": lengths,
        "skipped": skipped,
    }


def _add(tar: tarfile.TarFile, key: str, members: Members) -> None:
    for suffix, data in members.items():
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))


def make_shards(config: TrainConfig, output: str | Path, shard_size: int = 1000) -> dict[str, Any]:
    """Write the training and validation data of `config` (as its task reads them) as shards in `output`:
    the training samples in an order shuffled by `config.seed` (so each shard mixes the classes, as sorted
    folders would not), the validation samples in order. Returns the _info.json written."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    output = Path(output)
    if output.is_dir() and (any(output.glob("*.tar")) or (output / INFO_NAME).exists()):
        raise FileExistsError(f"{output} already holds shards; write to another directory, or remove them first")
    train, val, members, meta = _task_sources(config)
    if isinstance(train, Stream) or isinstance(val, Stream):
        raise ValueError("the data is streamed already; make-shards reads folders, lists and Hugging Face datasets")
    output.mkdir(parents=True, exist_ok=True)
    shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    splits = {
        "train": write_split(output, "train", members(train, shuffled), shard_size),
        "val": write_split(output, "val", members(val, range(len(val))), shard_size),
    }
    info = {"name": str(config.data or config.train_list), "task": config.task, **meta, "splits": splits}
    with atomic_write(output / INFO_NAME) as handle:
        json.dump(info, handle, indent=1)
    return info


def _task_sources(config: TrainConfig) -> tuple[Any, Any, Callable[..., Iterator[Members | None]], dict[str, Any]]:
    """(train, val, the samples' members, what _info.json records about the classes) for the config's task."""
    if config.task == "classification":
        train, val = labelled_sources(config)
        return train, val, labelled_members, {"classes": train.classes}
    if config.task == "masked-image-modeling":
        train, val = unlabelled_sources(config)
        return train, val, functools.partial(labelled_members, labelled=False), {}
    if config.task == "semantic-segmentation":
        train, val, names = segmentation_sources(config)
        return train, val, segmentation_members, {"classes": names}
    train, val = detection_sources(config)
    return train, val, detection_members, {"categories": train.categories}
