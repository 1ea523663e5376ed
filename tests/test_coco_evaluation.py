"""COCO evaluation of torchvision-style detections: the numbers must be pycocotools' COCOeval's own.

A small ground truth (sparse category ids, images of several sizes, polygons, a crowd region as
uncompressed RLE, an image without objects, a category without objects) and hand-made detections
(perfect, shifted, false positives) are evaluated both through `focalnet.detection.evaluation` and
by COCOeval directly on the JSON round trip of the same results.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from focalnet.detection.evaluation import (
    STAT_NAMES,
    CocoEvaluation,
    coco_evaluate,
    format_per_class_table,
    to_coco_results,
)

# pycocotools' mask decoding predates NumPy 2's `copy` keyword of __array__; its warning is not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}, {"id": 9, "name": "fish"}]
LABEL_TO_CATEGORY = [0, 1, 3, 7, 9]  # label 0 is the background; "fish" (9) has no ground truth
IMAGE_SIZES = {1: (480, 640), 2: (240, 320), 3: (300, 200), 4: (192, 256)}  # id: (height, width); 3 has no objects


def rectangle(x: float, y: float, width: float, height: float) -> list[float]:
    return [x, y, x + width, y, x + width, y + height, x, y + height]


def shifted(polygon: list[float], dx: float, dy: float) -> list[float]:
    return [value + (dx if i % 2 == 0 else dy) for i, value in enumerate(polygon)]


CAT_LARGE = rectangle(50, 60, 200, 150)
DOG_MEDIUM = rectangle(300, 100, 60, 50)
BIRD_SMALL = rectangle(400, 300, 20, 25)
CAT_MEDIUM = rectangle(20, 30, 80, 60)
CAT_SMALL = rectangle(200, 150, 25, 30)
BIRD_TRIANGLE = [150, 20, 230, 20, 150, 100]
BIRD_LARGE = rectangle(10, 10, 120, 100)
DOG_SMALL = rectangle(150, 120, 30, 30)
OBJECTS = {  # image id: [(category id, polygon)], small, medium and large objects
    1: [(1, CAT_LARGE), (3, DOG_MEDIUM), (7, BIRD_SMALL)],
    2: [(1, CAT_MEDIUM), (1, CAT_SMALL), (7, BIRD_TRIANGLE)],
    4: [(7, BIRD_LARGE), (3, DOG_SMALL)],
}
CROWD = (1, 3, rectangle(450, 350, 150, 100))  # (image id, category id, polygon): a crowd of dogs
MIXED = {  # image id: [(category id, polygon, score)]
    1: [
        (1, CAT_LARGE, 0.95),
        (1, rectangle(500, 20, 60, 60), 0.9),  # false positive
        (3, shifted(DOG_MEDIUM, 10, 5), 0.8),
        (7, BIRD_SMALL, 0.7),
        (3, rectangle(460, 360, 100, 80), 0.6),  # on the crowd: ignored
    ],
    2: [
        (1, shifted(CAT_MEDIUM, 5, 5), 0.85),
        (7, shifted(BIRD_TRIANGLE, 20, 0), 0.75),
        (9, rectangle(250, 180, 40, 40), 0.5),  # a category without ground truth
        (3, rectangle(280, 20, 20, 20), 0.4),  # false positive
    ],
    3: [(7, rectangle(20, 20, 50, 50), 0.65)],  # false positive on the image without objects
    4: [(7, shifted(BIRD_LARGE, 3, 3), 0.9), (3, DOG_SMALL, 0.3)],
}
PERFECT = {
    image_id: [(category, polygon, 1.0 - 0.1 * i) for i, (category, polygon) in enumerate(objects)]
    for image_id, objects in OBJECTS.items()
}


def polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    """The polygon rasterised as pycocotools rasterises ground truth, so a mask from it matches exactly."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))


def polygon_area(polygon: list[float]) -> float:
    xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def polygon_box(polygon: list[float]) -> list[float]:
    """(x1, y1, x2, y2)."""
    return [min(polygon[0::2]), min(polygon[1::2]), max(polygon[0::2]), max(polygon[1::2])]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"counts": [0, *counts] if flat[0] else counts, "size": list(mask.shape)}


def annotation(annotation_id: int, image_id: int, category_id: int, polygon: list[float]) -> dict:
    x1, y1, x2, y2 = polygon_box(polygon)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": polygon_area(polygon),
        "segmentation": [polygon],
        "iscrowd": 0,
    }


def ground_truth_dict() -> dict:
    polygons = [(image_id, category, polygon) for image_id, objects in OBJECTS.items() for category, polygon in objects]
    annotations = [annotation(i, *polygon) for i, polygon in enumerate(polygons, start=1)]
    crowd = annotation(len(annotations) + 1, *CROWD)
    crowd.update(iscrowd=1, segmentation=uncompressed_rle(polygon_mask(CROWD[2], *IMAGE_SIZES[CROWD[0]])))
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, (h, w) in IMAGE_SIZES.items()]
    return {"images": images, "annotations": [*annotations, crowd], "categories": CATEGORIES}


@pytest.fixture
def ground_truth_path(tmp_path: Path) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ground_truth_dict()))
    return path


def torchvision_detections(image_id: int, objects: list[tuple[int, list[float], float]]) -> dict[str, torch.Tensor]:
    """What Mask R-CNN returns in eval mode: xyxy boxes, contiguous labels, scores, (N, 1, H, W) mask probabilities."""
    height, width = IMAGE_SIZES[image_id]
    masks = [0.1 + 0.8 * torch.from_numpy(polygon_mask(polygon, height, width)).float() for _, polygon, _ in objects]
    return {
        "boxes": torch.tensor([polygon_box(polygon) for _, polygon, _ in objects]),
        "labels": torch.tensor([LABEL_TO_CATEGORY.index(category) for category, _, _ in objects]),
        "scores": torch.tensor([score for _, _, score in objects]),
        "masks": torch.stack(masks)[:, None],
    }


def coco_results(predictions: dict[int, list], iou_types: tuple[str, ...] = ("bbox", "segm")) -> list[dict]:
    return [
        result
        for image_id, objects in predictions.items()
        for result in to_coco_results(image_id, torchvision_detections(image_id, objects), LABEL_TO_CATEGORY, iou_types)
    ]


def reference_stats(ground_truth_path: Path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None):
    """COCOeval's stats run by hand on the JSON round trip of `results`, as COCO's evaluation server reads them."""
    loaded = json.loads(json.dumps(results))
    if iou_type == "segm":  # COCO's segmentation result format: image_id, category_id, segmentation, score
        loaded = [{key: value for key, value in result.items() if key != "bbox"} for result in loaded]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(ground_truth_path))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(loaded), iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_to_coco_results_maps_labels_boxes_and_masks() -> None:
    masks = torch.rand(3, 1, 6, 8)
    masks[0, 0, 0, :4] = 0.5  # exactly at the threshold: background
    masks[1] = 0.0
    detections = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 8.0, 6.0], [1.5, 2.5, 3.25, 4.0]]),
        "labels": torch.tensor([1, 2, 3]),
        "scores": torch.tensor([0.9, 0.5, 0.25]),
        "masks": masks,
    }
    results = to_coco_results(5, detections, LABEL_TO_CATEGORY, ("bbox", "segm"))

    assert [result["image_id"] for result in results] == [5, 5, 5]
    assert [result["category_id"] for result in results] == [1, 3, 7]
    assert [result["bbox"] for result in results] == [[10, 20, 40, 60], [0, 0, 8, 6], [1.5, 2.5, 1.75, 1.5]]
    assert [result["score"] for result in results] == pytest.approx([0.9, 0.5, 0.25])
    for result, mask in zip(results, masks, strict=True):
        assert isinstance(result["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]), (mask[0] > 0.5).numpy())
    assert json.loads(json.dumps(results)) == results
    assert all("segmentation" not in result for result in to_coco_results(5, detections, LABEL_TO_CATEGORY))


def test_to_coco_results_of_an_image_without_detections() -> None:
    detections = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
        "masks": torch.zeros(0, 1, 30, 40),
    }
    assert to_coco_results(1, detections, LABEL_TO_CATEGORY, ("bbox", "segm")) == []


def test_stats_are_cocoevals(ground_truth_path: Path) -> None:
    results = coco_results(MIXED)
    submitted = copy.deepcopy(results)
    evaluation = coco_evaluate(ground_truth_path, results, ("bbox", "segm"))

    assert results == submitted, "pycocotools' loadRes must not write into the caller's results"
    assert isinstance(evaluation, CocoEvaluation)
    assert list(evaluation.stats) == [f"{iou_type}_{name}" for iou_type in ("bbox", "segm") for name in STAT_NAMES]
    for iou_type in ("bbox", "segm"):
        reference = reference_stats(ground_truth_path, results, iou_type)
        for name, value in zip(STAT_NAMES, reference, strict=True):
            assert evaluation.stats[f"{iou_type}_{name}"] == value, f"{iou_type}_{name}"
        assert 0.2 < evaluation.stats[f"{iou_type}_map"] < 0.9  # neither trivial nor perfect
    assert evaluation.stats["bbox_map"] != evaluation.stats["segm_map"]  # the triangle's box and mask differ


def test_perfect_detections_score_one(ground_truth_path: Path) -> None:
    evaluation = coco_evaluate(COCO(str(ground_truth_path)), coco_results(PERFECT), ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        for name in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
            assert evaluation.stats[f"{iou_type}_{name}"] == pytest.approx(1.0), f"{iou_type}_{name}"
        assert evaluation.per_class_ap[iou_type]["cat"] == pytest.approx(1.0)


def test_images_without_results_count_as_misses(ground_truth_path: Path) -> None:
    on_other_image = {"image_id": 999, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 1.0}
    perfect = coco_evaluate(ground_truth_path, [*coco_results(PERFECT, ("bbox",)), on_other_image])
    assert perfect.stats["bbox_map"] == pytest.approx(1.0)  # the result on an unknown image is left out

    without_image_4 = coco_evaluate(ground_truth_path, coco_results({1: PERFECT[1], 2: PERFECT[2]}, ("bbox",)))
    assert without_image_4.stats["bbox_mar_100"] < 1.0
    assert without_image_4.stats["bbox_map_large"] < 1.0


def test_per_class_ap_is_cocoevals_for_that_category(ground_truth_path: Path) -> None:
    results = coco_results(MIXED)
    evaluation = coco_evaluate(ground_truth_path, results, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        per_class = evaluation.per_class_ap[iou_type]
        assert list(per_class) == ["cat", "dog", "bird", "fish"]
        for category in CATEGORIES[:3]:
            reference = reference_stats(ground_truth_path, results, iou_type, cat_ids=[category["id"]])[0]
            assert per_class[category["name"]] == pytest.approx(reference, abs=1e-12), (iou_type, category)
        assert math.isnan(per_class["fish"])  # detections but no ground truth: COCOeval says -1
    assert len({round(ap, 6) for ap in evaluation.per_class_ap["bbox"].values() if not math.isnan(ap)}) == 3


def test_segm_area_ranges_use_mask_area(tmp_path: Path) -> None:
    """A thin diagonal false positive: a small mask in a medium box, so it counts against small masks only."""
    truth = rectangle(10, 10, 20, 20)
    height, width = IMAGE_SIZES[1]
    path = tmp_path / "instances.json"
    ground_truth = {
        "images": [{"id": 1, "height": height, "width": width}],
        "annotations": [annotation(1, 1, 7, truth)],
        "categories": CATEGORIES,
    }
    path.write_text(json.dumps(ground_truth))
    diagonal = [40, 40, 43, 40, 90, 87, 90, 90, 87, 90, 40, 43]
    detections = torchvision_detections(1, [(7, diagonal, 0.9), (7, truth, 0.5)])
    results = to_coco_results(1, detections, LABEL_TO_CATEGORY, ("bbox", "segm"))
    assert mask_utils.area(results[0]["segmentation"]) < 32**2 < results[0]["bbox"][2] * results[0]["bbox"][3]

    evaluation = coco_evaluate(path, results, ("bbox", "segm"))
    assert evaluation.stats["bbox_map_small"] == pytest.approx(1.0)  # the box is medium: ignored among small ones
    assert evaluation.stats["segm_map_small"] == pytest.approx(0.5)  # the mask is small: ranked above the hit


def test_empty_results_score_zero(ground_truth_path: Path) -> None:
    evaluation = coco_evaluate(ground_truth_path, [], ("bbox", "segm"))
    assert evaluation.stats == {f"{iou_type}_{name}": 0.0 for iou_type in ("bbox", "segm") for name in STAT_NAMES}
    for per_class in evaluation.per_class_ap.values():
        assert {name: ap for name, ap in per_class.items() if name != "fish"} == {"cat": 0.0, "dog": 0.0, "bird": 0.0}
        assert math.isnan(per_class["fish"])


def test_errors(ground_truth_path: Path) -> None:
    unknown = {"image_id": 1, "category_id": 42, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.5}
    with pytest.raises(ValueError, match="42"):
        coco_evaluate(ground_truth_path, [*coco_results(PERFECT, ("bbox",)), unknown])
    detections = torchvision_detections(1, PERFECT[1])
    del detections["masks"]
    with pytest.raises(ValueError, match="no masks"):
        to_coco_results(1, detections, LABEL_TO_CATEGORY, ("bbox", "segm"))
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(ground_truth_path, coco_results(PERFECT, ("bbox",)), ("segm",))
    with pytest.raises(ValueError, match="keypoints"):
        coco_evaluate(ground_truth_path, [], ("keypoints",))


def test_missing_pycocotools_is_a_clear_import_error(ground_truth_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install 'focalnet\[detection\]'"):
        coco_evaluate(ground_truth_path, [])


def test_module_imports_without_pycocotools() -> None:
    code = "import sys; sys.modules['pycocotools'] = None; import focalnet.detection.evaluation"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_format_per_class_table() -> None:
    table = format_per_class_table({"cat": 0.5, "dog": 1.0, "a long name": math.nan, "bird": 0.12345}, columns=3)
    lines = table.splitlines()
    assert len(lines) == 3  # header, 3 pairs, 1 pair
    assert lines[0].split() == ["category", "AP", "|", "category", "AP", "|", "category", "AP"]
    assert lines[1].split() == ["cat", "50.0", "|", "dog", "100.0", "|", "a", "long", "name", "n/a"]
    assert lines[2].split() == ["bird", "12.3"]
    assert len({line.index("|") for line in lines[:2]}) == 1  # aligned columns
