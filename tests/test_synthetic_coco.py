"""The synthetic shapes dataset (focalnet.detection.synthetic): COCO layout, masks, determinism, arguments."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalnet.detection.synthetic import CATEGORIES, make_shapes_dataset

COCO = pytest.importorskip("pycocotools.coco").COCO

SPLITS = ("train", "val")
LUMINANCE = np.array([0.299, 0.587, 0.114])
SMALL = {"min_side": 64, "max_side": 96}

# pycocotools' C extension predates numpy 2's `copy` keyword; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn:DeprecationWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), train_images=40, val_images=12, seed=5)


def _coco_json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _pixels(root: Path, split: str, image: dict) -> np.ndarray:
    return np.asarray(Image.open(root / split / image["file_name"]).convert("RGB"))


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by one pixel (3x3)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])


def _box_iou(first: list[float], second: list[float]) -> float:
    inter_w = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    inter_h = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    inter = max(inter_w, 0.0) * max(inter_h, 0.0)
    return inter / (first[2] * first[3] + second[2] * second[3] - inter)


def _by_image(coco: dict) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def test_writes_coco_layout(dataset: Path) -> None:
    assert sorted(path.name for path in dataset.iterdir()) == ["annotations", "train", "val"]
    assert not [path for path in dataset.rglob(".*")], "temporary files left behind"
    for split, count in zip(SPLITS, (40, 12), strict=True):
        coco = _coco_json(dataset, split)
        assert set(coco) == {"info", "licenses", "images", "annotations", "categories"}
        assert coco["info"]["seed"] == 5 and coco["info"]["description"]
        assert [image["id"] for image in coco["images"]] == list(range(1, count + 1))
        assert [image["file_name"] for image in coco["images"]] == [f"{i:06d}.png" for i in range(1, count + 1)]
        assert sorted(path.name for path in (dataset / split).iterdir()) == [i["file_name"] for i in coco["images"]]
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
        for image in coco["images"]:
            assert Image.open(dataset / split / image["file_name"]).size == (image["width"], image["height"])
        for annotation in coco["annotations"]:
            assert annotation["iscrowd"] == 0
            assert len(annotation["segmentation"]) == 1 and len(annotation["segmentation"][0]) in (6, 8, 64)


def test_loads_in_pycocotools_with_sparse_category_ids(dataset: Path) -> None:
    coco = COCO(str(dataset / "annotations" / "instances_train.json"))
    assert coco.getCatIds() == [1, 3, 7]
    assert [category["name"] for category in coco.loadCats([1, 3, 7])] == ["circle", "square", "triangle"]
    assert coco.dataset["categories"] == CATEGORIES
    used = {annotation["category_id"] for annotation in coco.dataset["annotations"]}
    assert used == {1, 3, 7}
    vertices = {1: 64, 3: 8, 7: 6}  # flat coordinates: 32 vertices for a circle, 4 for a square, 3 for a triangle
    assert all(len(a["segmentation"][0]) == vertices[a["category_id"]] for a in coco.dataset["annotations"])


@pytest.mark.parametrize("split", SPLITS)
def test_masks_match_drawn_pixels(dataset: Path, split: str) -> None:
    coco = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
    checked = 0
    for image in coco.dataset["images"]:
        pixels = _pixels(dataset, split, image)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        masks = [coco.annToMask(annotation).astype(bool) for annotation in annotations]
        grown = [_grow(mask) for mask in masks]
        for index, (annotation, mask) in enumerate(zip(annotations, masks, strict=True)):
            ys, xs = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            # pycocotools' mask agrees with the box and the shoelace area written beside it
            assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1.5)
            assert mask.sum() == pytest.approx(annotation["area"], rel=0.05)
            # ... and with what was drawn: one fill colour inside, and that colour nowhere around it
            inside = ~_grow(~mask)
            colours, counts = np.unique(pixels[inside], axis=0, return_counts=True)
            fill = colours[counts.argmax()]
            assert counts.max() == inside.sum(), "the shape's interior is not one flat colour"
            filled = (pixels == fill).all(axis=-1)
            assert (filled & mask).sum() >= 0.8 * mask.sum()
            others = np.zeros_like(mask)
            for other in grown[:index] + grown[index + 1 :]:
                others |= other
            assert (filled & ~grown[index] & ~others).sum() <= 0.005 * mask.sum(), "fill colour outside the mask"
            # shapes stand out from the background under their box
            box = np.zeros_like(mask)
            box[int(y) : int(y + h) + 1, int(x) : int(x + w) + 1] = True
            background = box & ~others & ~grown[index]
            if background.sum() >= 20:
                assert abs(fill @ LUMINANCE - (pixels[background] @ LUMINANCE).mean()) >= 60
            checked += 1
    assert checked >= len(coco.dataset["images"])


@pytest.mark.parametrize("split", SPLITS)
def test_boxes_inside_images_sized_and_apart(dataset: Path, split: str) -> None:
    coco = _coco_json(dataset, split)
    images = {image["id"]: image for image in coco["images"]}
    for image_id, shapes in _by_image(coco).items():
        width, height = images[image_id]["width"], images[image_id]["height"]
        assert len(shapes) <= 4
        for annotation in shapes:
            x, y, w, h = annotation["bbox"]
            assert min(x, y) >= 0 and x + w <= width and y + h <= height
            assert min(w, h) >= 20 and max(w, h) <= 0.45 * min(width, height) * 1.25
            coordinates = np.array(annotation["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(coordinates.min(axis=0), [x, y]) and np.allclose(coordinates.max(axis=0), [x + w, y + h])
        for first, second in itertools.combinations(shapes, 2):
            assert _box_iou(first["bbox"], second["bbox"]) <= 0.2


def test_some_images_have_no_objects(dataset: Path) -> None:
    for split in SPLITS:
        coco = _coco_json(dataset, split)
        counts = [len(annotations) for annotations in _by_image(coco).values()]
        empty = counts.count(0)
        assert 1 <= empty <= max(1, len(counts) // 10), (split, counts)
        assert max(counts) >= 3


def test_image_sizes_vary(dataset: Path) -> None:
    images = _coco_json(dataset, "train")["images"]
    widths = [image["width"] for image in images]
    heights = [image["height"] for image in images]
    assert min(widths + heights) >= 160 and max(widths + heights) <= 256
    assert len(set(widths)) >= 10 and len(set(heights)) >= 10
    assert any(w > h for w, h in zip(widths, heights, strict=True))
    assert any(w < h for w, h in zip(widths, heights, strict=True))


def _snapshot(root: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    texts = {split: (root / "annotations" / f"instances_{split}.json").read_bytes() for split in SPLITS}
    pixels = {str(path.relative_to(root)): np.asarray(Image.open(path)) for path in sorted(root.glob("*/*.png"))}
    return texts, pixels


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    first = _snapshot(make_shapes_dataset(tmp_path / "a", train_images=6, val_images=2, seed=11, **SMALL))
    again = _snapshot(make_shapes_dataset(tmp_path / "b", train_images=6, val_images=2, seed=11, **SMALL))
    other = _snapshot(make_shapes_dataset(tmp_path / "c", train_images=6, val_images=2, seed=12, **SMALL))
    assert first[0] == again[0]
    assert first[1].keys() == again[1].keys() and len(first[1]) == 8
    assert all(np.array_equal(first[1][name], again[1][name]) for name in first[1])
    assert first[0]["train"] != other[0]["train"] and first[0]["val"] != other[0]["val"]
    assert not np.array_equal(first[1]["train/000001.png"], other[1]["train/000001.png"])


def test_val_size_leaves_train_unchanged(tmp_path: Path) -> None:
    one = make_shapes_dataset(tmp_path / "a", train_images=4, val_images=1, seed=3, **SMALL)
    three = make_shapes_dataset(tmp_path / "b", train_images=4, val_images=3, seed=3, **SMALL)
    assert _snapshot(one)[0]["train"] == _snapshot(three)[0]["train"]
    for path in sorted((one / "train").glob("*.png")):
        assert path.read_bytes() == (three / "train" / path.name).read_bytes()


def test_empty_val_split(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path, train_images=1, val_images=0, min_side=64, max_side=64)
    assert _coco_json(root, "val")["images"] == [] and (root / "val").is_dir()
    assert [(i["width"], i["height"]) for i in _coco_json(root, "train")["images"]] == [(64, 64)]
    assert COCO(str(root / "annotations" / "instances_val.json")).getCatIds() == [1, 3, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_images": 0}, "train_images must be >= 1"),
        ({"train_images": 2.5}, "train_images must be an integer"),
        ({"val_images": -1}, "val_images must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"min_side": 32}, "min_side must be >= 64"),
        ({"min_side": 200, "max_side": 100}, r"min_side \(200\) must not exceed max_side \(100\)"),
        ({"max_objects": 0}, "max_objects must be >= 1"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_shapes_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_pillow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"Pillow and numpy: pip install 'focalnet\[detection\]'"):
        make_shapes_dataset(tmp_path, train_images=1, val_images=0)
