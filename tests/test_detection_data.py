"""COCO-layout data for detection: finding splits, checking annotations (clear errors, counted
warnings), category id mapping, masks from polygons and RLE, and augmentation that keeps boxes,
masks and pixels together."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from focalnet.detection.data import (
    AnnotationError,
    CocoDetection,
    collate_detection,
    eval_transform,
    find_split,
    instance_masks,
    read_annotations,
    report_missing,
    train_transform,
)
from focalnet.detection.synthetic import make_shapes_dataset

pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), 12, 4, seed=3, min_side=96, max_side=128)


def load(shapes: Path, split: str = "train") -> dict:
    return json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_find_split_takes_both_namings(shapes: Path, tmp_path: Path) -> None:
    assert find_split(shapes, "val") == (shapes / "annotations" / "instances_val.json", shapes / "val")
    renamed = tmp_path / "coco"
    (renamed / "annotations").mkdir(parents=True)
    shutil.copytree(shapes / "train", renamed / "train2017")
    shutil.copy(shapes / "annotations" / "instances_train.json", renamed / "annotations" / "instances_train2017.json")
    assert find_split(renamed, "train") == (renamed / "annotations/instances_train2017.json", renamed / "train2017")
    with pytest.raises(FileNotFoundError, match="--val-annotations"):
        find_split(renamed, "val")


def test_sparse_category_ids_map_to_contiguous_labels_and_back(shapes: Path) -> None:
    coco = read_annotations(*find_split(shapes, "train"))
    assert [c["id"] for c in coco.categories] == [1, 3, 7]
    assert coco.label_to_category == [0, 1, 3, 7]
    raw = load(shapes)
    by_image: dict[int, list[int]] = {}
    for annotation in raw["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["category_id"])
    for record in coco.images:
        assert [coco.label_to_category[label] for label in record.labels] == by_image.get(record.id, [])
    assert any(not record.labels for record in coco.images), "the generator writes images without objects"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "{not json", "is not valid JSON"),
        (lambda d: [1, 2], "top level must be an object"),
        (lambda d: {**d, "annotations": None}, "'annotations' must be a list"),
        (lambda d: {**d, "categories": [{"name": "x"}]}, "needs an integer 'id'"),
        (lambda d: {**d, "categories": d["categories"] + d["categories"][:1]}, "category ids repeat"),
        (lambda d: {**d, "images": [{"id": 1, "file_name": "a.png"}]}, "positive integer 'width'"),
        (lambda d: {**d, "images": d["images"] + d["images"][:1]}, "appears twice"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 999}]}, "refers to image 999"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 2}]}, "category 2, not among"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, 3]}]}, "needs 'bbox'"),
    ],
)
def test_malformed_annotations_name_the_file_and_the_problem(shapes: Path, tmp_path: Path, change, message) -> None:
    path = write(tmp_path / "broken.json", change(copy.deepcopy(load(shapes))))
    with pytest.raises(AnnotationError, match=message) as error:
        read_annotations(path, shapes / "train")
    assert str(path) in str(error.value)


def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped_with_one_warning(
    shapes: Path, tmp_path: Path
) -> None:
    data = load(shapes)
    image = next(i for i in data["images"] if any(a["image_id"] == i["id"] for a in data["annotations"]))
    width, height = image["width"], image["height"]
    template = next(a for a in data["annotations"] if a["image_id"] == image["id"])
    extra = [
        {**template, "id": 9001, "bbox": [width - 10, height - 10, 40, 40]},  # reaches outside: clipped
        {**template, "id": 9002, "bbox": [-5, 3, 20, 10]},  # clipped on the left
        {**template, "id": 9003, "bbox": [5, 5, 0, 10]},  # no width: dropped
        {**template, "id": 9004, "bbox": [width + 5, 5, 10, 10]},  # wholly outside: dropped
    ]
    data["annotations"] += extra
    path = write(tmp_path / "boxes.json", data)
    with pytest.warns(UserWarning, match="2 boxes reaching outside their image were clipped, 2 boxes without area"):
        coco = read_annotations(path, shapes / "train")
    assert (coco.clipped, coco.dropped) == (2, 2)
    record = next(r for r in coco.images if r.id == image["id"])
    assert record.boxes[-2:] == [[width - 10, height - 10, width, height], [0, 3, 15, 13]]


def test_missing_images_are_counted_and_skipped_when_loaded(shapes: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(shapes / "val", images)
    data = load(shapes, "val")
    (images / data["images"][0]["file_name"]).unlink()
    (images / data["images"][1]["file_name"]).write_bytes(b"not an image")
    coco = read_annotations(shapes / "annotations" / "instances_val.json", images)
    with pytest.warns(UserWarning, match="1 images listed"):
        assert report_missing(coco) == 1
    dataset = CocoDetection(coco, eval_transform())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [dataset[(i, i)] for i in range(len(dataset))]
    assert samples[0] is None and samples[1] is None and all(s is not None for s in samples[2:])
    assert len(caught) == 2 and all("skipping" in str(w.message) for w in caught)
    images_out, targets, skipped = collate_detection(samples)
    assert skipped == 2 and len(images_out) == len(targets) == len(dataset) - 2
    assert [t["image_id"] for t in targets] == [i["id"] for i in data["images"][2:]]


def test_crowd_regions_are_left_out_of_training_targets(shapes: Path, tmp_path: Path) -> None:
    data = load(shapes)
    crowd = data["annotations"][0]
    crowd["iscrowd"] = 1
    path = write(tmp_path / "crowd.json", data)
    coco = read_annotations(path, shapes / "train")
    index = next(i for i, r in enumerate(coco.images) if r.id == crowd["image_id"])
    record = coco.images[index]
    target = CocoDetection(coco, eval_transform(), with_masks=True)[(index, 0)][1]
    assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) == len(record.boxes) - 1


def test_masks_from_polygons_and_rle_equal_pycocotools(shapes: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    path, images = find_split(shapes, "train")
    coco = read_annotations(path, images)
    reference = COCO(str(path))
    record = next(r for r in coco.images if len(r.boxes) >= 2)
    expected = torch.stack([torch.from_numpy(reference.annToMask(a)) for a in reference.imgToAnns[record.id]])
    assert torch.equal(instance_masks(record, range(len(record.boxes))), expected)
    # the same masks as compressed and uncompressed RLE
    compressed = [mask_utils.encode(m.numpy().copy(order="F")) for m in expected]
    uncompressed = [{"size": [record.height, record.width], "counts": _runs(m)} for m in expected]
    for segmentations in (compressed, uncompressed):
        record.segmentations = segmentations
        assert torch.equal(instance_masks(record, range(len(record.boxes))), expected)


def _runs(mask: torch.Tensor) -> list[int]:
    """COCO's uncompressed RLE: alternating run lengths of 0s and 1s, column-major."""
    flat = mask.t().flatten().tolist()
    runs, current, length = [], 0, 0
    for value in flat:
        if value != current:
            runs.append(length)
            current, length = value, 0
        length += 1
    return [*runs, length]


def test_training_augmentation_moves_boxes_masks_and_pixels_together(shapes: Path) -> None:
    coco = read_annotations(*find_split(shapes, "train"))
    transform = train_transform([64, 80, 96], max_size=120, hflip=0.5, random_crop=0.5)
    dataset = CocoDetection(coco, transform, with_masks=True)
    sizes, agreeing, total = set(), 0, 0
    for index in range(len(dataset)):
        for seed in range(4):
            image, target = dataset[(index, seed)]
            assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
            assert min(image.shape[-2:]) in (64, 80, 96) or max(image.shape[-2:]) <= 120
            sizes.add(tuple(image.shape[-2:]))
            boxes, masks = target["boxes"], target["masks"]
            assert len(boxes) == len(masks) == len(target["labels"])
            assert masks.shape[-2:] == image.shape[-2:]
            for box, mask in zip(boxes, masks, strict=True):
                ys, xs = mask.nonzero(as_tuple=True)
                extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                # the shape lies in its box (resampling blurs edges by a pixel) ...
                assert (extent[:2] >= box[:2] - 1.5).all() and (extent[2:] <= box[2:] + 1.5).all(), (box, extent)
                # ... and fills it, unless a crop cut off a corner of a triangle or circle
                agreeing += (box - extent).abs().max().item() <= 2.5
                total += 1
    assert agreeing >= 0.9 * total
    assert len(sizes) > 5
    # the same (index, seed) gives the same sample: augmentation depends on the sample alone
    first, second = dataset[(3, 11)], dataset[(3, 11)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])
