"""`focalnet predict` for detectors: boxes, labels, scores and masks drawn onto each image, and a JSON.

Drawing uses torchvision's `draw_bounding_boxes` and `draw_segmentation_masks`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path, unique_stem
from ..image_processing import load_image
from .models import detector_config, from_pretrained

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]  # fmt: skip
"""Sasha Trubetskoy's distinct colours; label i gets PALETTE[i % 12]."""


def _utils():
    try:
        from torchvision.transforms.v2 import functional
        from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    except ImportError as error:
        raise ImportError("drawing detections needs torchvision: pip install 'focalnet[detection]'") from error
    return functional, draw_bounding_boxes, draw_segmentation_masks


def draw_detections(image: torch.Tensor, detections: dict[str, torch.Tensor], names: dict[int, str]) -> torch.Tensor:
    """`image` (3, H, W) uint8 with the masks (alpha 0.45), boxes and "name score" captions drawn on."""
    _, draw_boxes, draw_masks = _utils()
    labels = detections["labels"].tolist()
    colours = [PALETTE[label % len(PALETTE)] for label in labels]
    if "masks" in detections and len(labels):
        image = draw_masks(image, detections["masks"][:, 0] > 0.5, alpha=0.45, colors=colours)
    scores = detections["scores"].tolist()
    captions = [f"{names.get(label, label)} {score:.2f}" for label, score in zip(labels, scores, strict=True)]
    if not labels:
        return image
    width = max(1, round(max(image.shape[-2:]) / 320))
    return draw_boxes(image, detections["boxes"], captions, colors=colours, width=width)


class DetectionPredictor:
    """A saved detector; `predict` never stops on a bad image."""

    def __init__(self, model: nn.Module, score_threshold: float = 0.5) -> None:
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.model = model.eval()
        self.config = detector_config(model)
        self.score_threshold = score_threshold

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, device: str = "cpu", score_threshold: float = 0.5
    ) -> DetectionPredictor:
        return cls(from_pretrained(source, device=device), score_threshold)

    def detect(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every detection (on the CPU) of each uint8 (3, H, W) image, the images run as one batch:
        torchvision pads them to the largest, so give images of one size for answers that do not
        depend on the batch."""
        functional, _, _ = _utils()
        device = next(self.model.parameters()).device
        inputs = [functional.to_dtype(image, torch.float32, scale=True).to(device) for image in images]
        with torch.inference_mode():
            outputs = self.model(inputs)
        return [{key: value.cpu() for key, value in output.items()} for output in outputs]

    @staticmethod
    def above(detections: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
        """The detections scoring at least `threshold`."""
        keep = detections["scores"] >= threshold
        return {key: value[keep] for key, value in detections.items()}

    def predict(
        self,
        paths: Sequence[str],
        output_dir: str | os.PathLike | None = None,
        progress: Callable[[Iterable, str, int], Iterable] | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Detections above the threshold per readable image (and, with `output_dir`, a PNG of each:
        `<stem>.png`, `<stem>-1.png` for a repeated stem), and (path, reason) for each unreadable image.
        `progress` may wrap the paths (as `progress(paths, description, total)`, e.g. `focalnet.cli.progress`)."""
        functional, _, _ = _utils()
        names = self.config.label_names
        to_category = self.config.label_to_category
        results, failures = [], []
        used: set[str] = set()
        for path in progress(paths, "detecting", len(paths)) if progress is not None else paths:
            try:
                image = functional.pil_to_tensor(load_image(path))
            except (OSError, ValueError) as error:
                failures.append((path, str(error)))
                continue
            detections = self.above(self.detect([image])[0], self.score_threshold)
            result: dict[str, Any] = {"path": path, "detections": _describe(detections, names, to_category)}
            if output_dir is not None:
                target = Path(output_dir) / f"{unique_stem(Path(path).stem, used)}.png"
                result["drawing"] = str(_save_png(draw_detections(image, detections, names), target))
            results.append(result)
        return results, failures


def _describe(detections: dict[str, torch.Tensor], names: dict[int, str], to_category: list[int]) -> list[dict]:
    return [
        {
            "label": names.get(label, str(label)),
            "category_id": to_category[label],
            "score": score,
            "box": box,
        }
        for label, score, box in zip(
            detections["labels"].tolist(), detections["scores"].tolist(), detections["boxes"].tolist(), strict=True
        )
    ]


def _save_png(image: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path
