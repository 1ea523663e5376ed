"""Where each task's samples come from, in one place: folders, lists and the digits (as before),
Hugging Face datasets (`focalnet.training.hf`), or streams (`focalnet.training.streaming`).

One function per kind of sample returns the training and validation sources: map-style ones are
the records the tasks' datasets always took (`LabelledImages`, `CocoAnnotations`, segmentation
splits), addressed by index through the engine's sampler; a `Stream` plans its own epochs. The
validation source is `val_data` where given (shards, or any source `data` takes), else `data`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import hf, streaming
from .config import TrainConfig
from .data import load_source, unlabelled_source


def evaluation_source(config: TrainConfig, class_names: list[str] | None = None) -> Any:
    """The validation data of `config`'s task alone, read as training reads it (`focalnet evaluate` on a
    Hugging Face dataset or shards); a segmentation source takes the model's `class_names`."""
    if config.task == "classification":
        return _labelled(config, "val")
    if config.task in ("detection", "instance-segmentation"):
        return _detection(config, "val")
    if config.task == "semantic-segmentation":
        return _segmentation(config, "val", class_names)[0]
    raise ValueError(f"focalnet evaluate scores classifiers, detectors and segmenters, not {config.task!r}")


def location(config: TrainConfig, split: str) -> str | None:
    """The data of `split`: `val_data` for validation where given, else `data`."""
    return config.val_data if split == "val" and config.val_data else config.data


def _folder_config(config: TrainConfig, split: str) -> TrainConfig:
    """`config` reading `split` from folders, lists or the digits: `val_data` taking the place of `data`."""
    where = location(config, split)
    return config if where == config.data else dataclasses.replace(config, data=where, val_data=None)


def labelled_sources(config: TrainConfig) -> tuple[Any, Any]:
    """Images with class labels (classification); validation keeps the training classes."""
    train = _labelled(config, "train")
    return train, _labelled(config, "val", train.classes)


def _labelled(config: TrainConfig, split: str, classes: list[str] | None = None) -> Any:
    where = location(config, split)
    if streaming.is_streamed(config, where):
        return streaming.labelled_stream(config, where, split, classes)
    if hf.recognises(where):
        part = hf.split_of(config, where, split)
        return hf.labelled_images(part.rows, config, part.where, classes)
    return load_source(_folder_config(config, split), split, classes)


def unlabelled_sources(config: TrainConfig) -> tuple[Any, Any]:
    """Images without labels (masked image modeling)."""
    return _unlabelled(config, "train"), _unlabelled(config, "val")


def _unlabelled(config: TrainConfig, split: str) -> Any:
    where = location(config, split)
    if streaming.is_streamed(config, where):
        return streaming.labelled_stream(config, where, split, labelled=False)
    if hf.recognises(where):
        part = hf.split_of(config, where, split)
        return hf.unlabelled_images(part.rows, config, part.where)
    return unlabelled_source(_folder_config(config, split), split)


def detection_sources(config: TrainConfig) -> tuple[Any, Any]:
    """Images with boxes (and masks): `CocoAnnotations` or streams; validation keeps the training categories."""
    train = _detection(config, "train")
    return train, _detection(config, "val", train.categories)


def _detection(config: TrainConfig, split: str, categories: list[dict[str, Any]] | None = None) -> Any:
    where = location(config, split)
    if streaming.is_streamed(config, where):
        return streaming.detection_stream(config, where, split, categories)
    if hf.recognises(where):
        part = hf.split_of(config, where, split)
        return hf.coco_records(part.rows, config, part.where)
    from .detection import read_split

    return read_split(_folder_config(config, split), split)


def segmentation_sources(config: TrainConfig) -> tuple[Any, Any, list[str]]:
    """Images with label maps, and the class names (`class_names`, else the training data's own)."""
    train, names = _segmentation(config, "train")
    val, _ = _segmentation(config, "val", names)
    return train, val, names


def _segmentation(config: TrainConfig, split: str, names: list[str] | None = None) -> tuple[Any, list[str]]:
    where = location(config, split)
    if streaming.is_streamed(config, where):
        stream = streaming.segmentation_stream(config, where, split, names)
        return stream, stream.classes
    if hf.recognises(where):
        part = hf.split_of(config, where, split)
        pairs = hf.segmentation_pairs(part.rows, config, part.where)
        return pairs, names or hf.segmentation_classes(config, where, part.rows)
    from ..segmentation import data

    return data.find_split(where, split), names or list(config.class_names or data.read_class_names(where))
