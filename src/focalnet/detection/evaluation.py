"""COCO evaluation of torchvision detector outputs, with pycocotools' COCOeval as the reference metric.

`to_coco_results` turns one image's eval-mode detections into COCO result dicts and
`coco_evaluate` runs COCOeval on them: the metric itself is never re-implemented here, only read
out of COCOeval (its summary stats, and per-class AP from its accumulated precision array).
pycocotools is imported lazily, so the package imports without it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
"""Names of COCOeval's twelve summary stats, in the order of `COCOeval.stats`."""

IOU_TYPES = ("bbox", "segm")
"""The COCO evaluation types supported: boxes and instance masks."""

MASK_THRESHOLD = 0.5
"""Mask R-CNN's mask probabilities above this are the instance (torchvision's own threshold)."""


def _pycocotools() -> ModuleType:
    """The pycocotools package with its `coco`, `cocoeval` and `mask` modules, or a helpful ImportError."""
    try:
        import pycocotools.coco
        import pycocotools.cocoeval
        import pycocotools.mask
    except ImportError as error:
        raise ImportError("COCO evaluation needs pycocotools: pip install 'focalnet[detection]'") from error
    return pycocotools


def _check_iou_types(iou_types: Sequence[str]) -> None:
    unknown = sorted(set(iou_types) - set(IOU_TYPES))
    if unknown:
        raise ValueError(f"unknown iou types {unknown}; expected some of {IOU_TYPES}")


def _xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """COCO boxes are (x, y, width, height); torchvision's are (x1, y1, x2, y2)."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def _encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """RLEs of (N, 1, H, W) mask probabilities thresholded at `MASK_THRESHOLD`, with str counts for JSON."""
    binary = (masks[:, 0] > MASK_THRESHOLD).to(torch.uint8).cpu().numpy()
    # pycocotools encodes an (H, W, N) column-major array
    rles = _pycocotools().mask.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_coco_results(
    image_id: int,
    detections: dict[str, torch.Tensor],
    label_to_category: Sequence[int],
    iou_types: Sequence[str] = ("bbox",),
) -> list[dict[str, Any]]:
    """One image's torchvision detections as COCO result dicts, ready for `coco_evaluate` or a JSON file.

    `detections` is the eval-mode output of FasterRCNN, MaskRCNN or RetinaNet for that image: boxes
    (N, 4) xyxy in input-image pixels, labels (N,), scores (N,) and, for Mask R-CNN, masks
    (N, 1, H, W) probabilities. Label L is the dataset category id `label_to_category[L]` (0 is
    background). Each result has "image_id", "category_id", "bbox" ([x, y, w, h]) and "score", and
    with "segm" in `iou_types` also "segmentation", the RLE of the mask above 0.5: COCO reads one
    list for both evaluations.
    """
    _check_iou_types(iou_types)
    if "segm" in iou_types and "masks" not in detections:
        raise ValueError('"segm" evaluation needs masks, but the model gives no masks (not a Mask R-CNN?)')
    boxes = _xyxy_to_xywh(detections["boxes"].detach().float().cpu()).tolist()
    categories = [label_to_category[label] for label in detections["labels"].tolist()]
    scores = detections["scores"].detach().float().cpu().tolist()
    results = [
        {"image_id": int(image_id), "category_id": int(category), "bbox": box, "score": score}
        for category, box, score in zip(categories, boxes, scores, strict=True)
    ]
    if "segm" in iou_types:
        for result, rle in zip(results, _encode_masks(detections["masks"].detach()), strict=True):
            result["segmentation"] = rle
    return results


@dataclass
class CocoEvaluation:
    """COCOeval's results for each evaluated iou type.

    `stats` maps f"{iou_type}_{name}" (name in `STAT_NAMES`, e.g. "bbox_map_50") to COCOeval's
    summary value (-1.0 where COCOeval has no ground truth for it, e.g. no small objects);
    `per_class_ap` maps an iou type to {category name: AP@[.5:.95]} (area all, 100 detections),
    nan for a category without ground truth.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, dict[str, float]]


def load_ground_truth(ground_truth: COCO | dict[str, Any] | str | os.PathLike[str]) -> COCO:
    """pycocotools' COCO object of an instances file or of instances data (indexed quietly), or the object given."""
    if isinstance(ground_truth, (str, os.PathLike)):
        with contextlib.redirect_stdout(io.StringIO()):
            return _pycocotools().coco.COCO(os.fspath(ground_truth))
    if isinstance(ground_truth, dict):
        coco = _pycocotools().coco.COCO()
        coco.dataset = ground_truth
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    return ground_truth


def _on_ground_truth_images(ground_truth: COCO, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results on images of the ground truth: pycocotools refuses any other image."""
    image_ids = set(ground_truth.getImgIds())
    return [result for result in results if result["image_id"] in image_ids]


def _check_results(ground_truth: COCO, results: list[dict[str, Any]], iou_types: Sequence[str]) -> None:
    """Fail early and clearly where COCOeval would silently ignore results or fail deep inside."""
    unknown = sorted({result["category_id"] for result in results} - set(ground_truth.getCatIds()))
    if unknown:
        raise ValueError(f"results have category ids {unknown} that the ground truth does not define")
    if "segm" in iou_types and not all("segmentation" in result for result in results):
        raise ValueError('"segm" evaluation needs a "segmentation" in every result: to_coco_results(..., iou_types)')


def _no_detections(ground_truth: COCO) -> COCO:
    """A result set without detections: pycocotools' `loadRes` fails on an empty list."""
    return load_ground_truth(
        {
            "images": list(ground_truth.dataset["images"]),
            "categories": list(ground_truth.dataset["categories"]),
            "annotations": [],
        }
    )


def _load_detections(ground_truth: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """`results` as a pycocotools result set for `iou_type`, leaving the caller's dicts untouched.

    `loadRes` writes "area", "id" and more into each dict, so it gets copies. For "segm" the boxes are
    dropped, so that an instance's area (which sorts detections into small/medium/large) is its
    mask's, as in COCO's segmentation result format, rather than its box's.
    """
    if not results:
        return _no_detections(ground_truth)
    if iou_type == "segm":
        copies = [{key: value for key, value in result.items() if key != "bbox"} for result in results]
    else:
        copies = [dict(result) for result in results]
    return ground_truth.loadRes(copies)


def _run_cocoeval(ground_truth: COCO, results: list[dict[str, Any]], iou_type: str) -> COCOeval:
    """COCOeval evaluated, accumulated and summarized, its printing silenced.

    COCOeval's default image ids are all those of the ground truth, so an image without
    detections counts its objects as misses.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = _pycocotools().cocoeval.COCOeval(
            ground_truth, _load_detections(ground_truth, results, iou_type), iou_type
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_precision(precision: np.ndarray) -> float:
    """Mean over the defined entries (COCOeval marks undefined ones -1), nan where none is."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else math.nan


def _per_class_ap(evaluator: COCOeval) -> dict[str, float]:
    """Each category's AP@[.5:.95] at area "all" and the most detections, from the accumulated precision.

    `eval["precision"]` is T (iou thresholds) x R (recall thresholds) x K (categories) x A (areas) x M
    (max detections); the mean of a category's slice is what `summarize` reports as its AP.
    """
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    categories = evaluator.cocoGt.loadCats(params.catIds)
    return {category["name"]: _mean_precision(precision[:, :, k]) for k, category in enumerate(categories)}


def _named_stats(iou_type: str, evaluator: COCOeval) -> dict[str, float]:
    return {f"{iou_type}_{name}": float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}


def coco_evaluate(
    ground_truth: COCO | str | os.PathLike[str],
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox",),
) -> CocoEvaluation:
    """Evaluate COCO `results` (see `to_coco_results`) against `ground_truth` with COCOeval, per iou type.

    `ground_truth` is a pycocotools COCO object or the path of an instances JSON. Only the images
    of the ground truth are evaluated, all of them: results on other images are left out, and an
    image without results counts its objects as misses. Empty results evaluate as no detections
    (0.0 wherever there is ground truth) instead of failing in pycocotools.
    """
    _check_iou_types(iou_types)
    ground_truth = load_ground_truth(ground_truth)
    results = _on_ground_truth_images(ground_truth, results)
    _check_results(ground_truth, results, iou_types)
    stats: dict[str, float] = {}
    per_class_ap: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        evaluator = _run_cocoeval(ground_truth, results, iou_type)
        stats.update(_named_stats(iou_type, evaluator))
        per_class_ap[iou_type] = _per_class_ap(evaluator)
    return CocoEvaluation(stats=stats, per_class_ap=per_class_ap)


def _format_ap(ap: float) -> str:
    return "n/a" if math.isnan(ap) else f"{100 * ap:.1f}"


def format_per_class_table(per_class_ap: dict[str, float], columns: int = 3) -> str:
    """A plain-text table of category names and AP in percent ('n/a' for nan), `columns` pairs a line, for the CLI."""
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    cells = [(name, _format_ap(ap)) for name, ap in per_class_ap.items()]
    name_width = max(len("category"), *(len(name) for name, _ in cells))
    ap_width = max(len("AP"), *(len(ap) for _, ap in cells))

    def pair(name: str, ap: str) -> str:
        return f"{name:<{name_width}}  {ap:>{ap_width}}"

    header = " | ".join([pair("category", "AP")] * min(columns, len(cells)))
    rows = [" | ".join(pair(*cell) for cell in cells[i : i + columns]) for i in range(0, len(cells), columns)]
    return "\n".join([header, *rows])
