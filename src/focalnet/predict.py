"""Batched classification of image files (`focalnet predict`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .image_processing import FocalNetImageProcessor, image_files
from .modeling import FocalNetForImageClassification
from .registry import find_checkpoint

PREPROCESSOR_NAME = "preprocessor_config.json"


def find_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given (even unreadable ones, to be reported), and image files under directories."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(str(p) for p in image_files(path))
        else:
            found.append(str(path))
    return found


def processor_for(source: str | os.PathLike, image_size: int) -> FocalNetImageProcessor:
    """The preprocessing the weights expect: the checkpoint's own file, its registry entry, or HF's."""
    path = Path(source)
    directory = path if path.is_dir() else path.parent
    if (directory / PREPROCESSOR_NAME).is_file():
        return FocalNetImageProcessor.from_pretrained(directory)
    entry = find_checkpoint(str(source))
    if entry is not None:
        return FocalNetImageProcessor.from_preset(entry.pipeline, image_size=entry.image_size)
    return FocalNetImageProcessor.from_preset("hf", image_size=image_size)


def is_detector_source(source: Any) -> bool:
    """Whether `source` is a detector directory saved by `focalnet.detection` (False, not an error,
    where the detection extra is not installed)."""
    try:
        from .detection.models import is_detector_directory
    except ImportError:
        return False
    return is_detector_directory(source)


def class_scores(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """Scores per class as transformers' image-classification pipeline gives them: sigmoid for
    multi-label models and single-output ones, softmax otherwise."""
    multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
    if multi_label or logits.shape[-1] == 1:
        return logits.float().sigmoid()
    return logits.float().softmax(-1)


def top_classes(scores: torch.Tensor, id2label: dict[int, str], top_k: int) -> list[list[dict[str, Any]]]:
    """The `top_k` classes of each row of `scores` (clamped to the number of classes), best first:
    {"index", "label", "score"} dicts."""
    k = min(top_k, scores.shape[-1])
    values, indices = scores.topk(k)
    return [
        [
            {"index": int(i), "label": id2label.get(int(i), str(int(i))), "score": float(s)}
            for s, i in zip(row_scores.tolist(), row_indices.tolist(), strict=True)
        ]
        for row_scores, row_indices in zip(values, indices, strict=True)
    ]


class Predictor:
    """A classifier with its preprocessing; `predict` never stops on a bad image.

    `logits` is the one step that runs the model: `focalnet.export.OnnxPredictor` overrides it to
    run an exported file, and so shares the reading of images and the top-k results.
    """

    def __init__(self, model: FocalNetForImageClassification, processor: FocalNetImageProcessor) -> None:
        self.model = model.eval()
        self.processor = processor
        self.config = model.config
        self.id2label = model.config.id2label

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str = "cpu", **overrides: Any) -> Predictor:
        model = FocalNetForImageClassification.from_pretrained(source, **overrides).to(device)
        return cls(model, processor_for(source, model.config.image_size_2d[0]))

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_labels) float32 logits of a preprocessed batch (run in the model's device and dtype)."""
        weight = next(self.model.parameters())
        with torch.inference_mode():
            return self.model(pixel_values.to(weight.device, weight.dtype)).logits.float()

    def predict(self, paths: Sequence[str], top_k: int = 5) -> tuple[list[dict], list[tuple[str, str]]]:
        """Top-k labels per readable image, and (path, reason) for each that could not be read."""
        tensors, readable, failures = [], [], []
        for path in paths:
            try:
                tensors.append(self.processor(path)["pixel_values"][0])
                readable.append(path)
            except (ValueError, OSError) as err:
                failures.append((path, str(err)))
        if not tensors:
            return [], failures
        scores = class_scores(self.logits(torch.stack(tensors)), self.config)
        ranked = top_classes(scores, self.id2label, top_k)
        results = [{"path": path, "top_k": guesses} for path, guesses in zip(readable, ranked, strict=True)]
        return results, failures
