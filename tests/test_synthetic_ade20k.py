"""The synthetic shapes dataset in ADE20K layout: files, label maps against COCO masks and pixels, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalnet.cli import main
from focalnet.detection.synthetic import ADE20K_CLASSES, CATEGORIES, make_shapes_dataset

COCO = pytest.importorskip("pycocotools.coco").COCO

FOLDERS = {"train": "training", "val": "validation"}
COUNTS = {"train": 12, "val": 6}
SMALL = {"min_side": 64, "max_side": 96}
LABELS = {category["id"]: label for label, category in enumerate(CATEGORIES, start=1)}

# pycocotools' C extension predates numpy 2's `copy` keyword; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn:DeprecationWarning")


@pytest.fixture(scope="module")
def ade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    return make_shapes_dataset(root, COUNTS["train"], COUNTS["val"], seed=7, layout="ade20k", **SMALL)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("coco"), COUNTS["train"], COUNTS["val"], seed=7, **SMALL)


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by one pixel (3x3)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])


def _shrink(mask: np.ndarray) -> np.ndarray:
    """`mask` eroded by one pixel (3x3)."""
    return ~_grow(~mask)


def _labels(root: Path, split: str, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "annotations" / FOLDERS[split] / file_name))


def _pixels(root: Path, split: str, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / FOLDERS[split] / file_name).convert("RGB"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_writes_ade20k_layout(ade: Path) -> None:
    assert sorted(path.name for path in ade.iterdir()) == ["annotations", "images", "labels.txt"]
    assert not [path for path in ade.rglob(".*")], "temporary files left behind"
    for kind in ("images", "annotations"):
        assert sorted(path.name for path in (ade / kind).iterdir()) == ["training", "validation"]
    for split, folder in FOLDERS.items():
        expected = [f"{index:06d}.png" for index in range(1, COUNTS[split] + 1)]
        assert sorted(path.name for path in (ade / "images" / folder).iterdir()) == expected
        assert sorted(path.name for path in (ade / "annotations" / folder).iterdir()) == expected


def test_labels_txt_names_classes_in_label_order(ade: Path) -> None:
    assert (ade / "labels.txt").read_text() == "background\ncircle\nsquare\ntriangle\n"
    assert ADE20K_CLASSES == ("background", "circle", "square", "triangle")
    assert [ADE20K_CLASSES[LABELS[category["id"]]] for category in CATEGORIES] == [c["name"] for c in CATEGORIES]


def test_label_maps_are_mode_l_sized_and_in_range(ade: Path) -> None:
    used: set[int] = set()
    empty = 0
    for folder in FOLDERS.values():
        for path in sorted((ade / "images" / folder).iterdir()):
            with Image.open(ade / "annotations" / folder / path.name) as label_map, Image.open(path) as image:
                assert label_map.mode == "L" and label_map.format == "PNG"
                assert label_map.size == image.size
                labels = np.asarray(label_map)
            assert labels.dtype == np.uint8
            values = set(np.unique(labels).tolist())
            assert values <= {0, 1, 2, 3} and 0 in values
            used |= values
            empty += values == {0}
    assert used == {0, 1, 2, 3}
    assert empty == 1  # the one empty training image (about 3%, at least one in a split of >= 10)


def test_images_identical_to_coco_layout(ade: Path, coco: Path) -> None:
    for split, folder in FOLDERS.items():
        names = sorted(path.name for path in (coco / split).iterdir())
        assert names == sorted(path.name for path in (ade / "images" / folder).iterdir())
        for name in names:
            assert (ade / "images" / folder / name).read_bytes() == (coco / split / name).read_bytes(), (split, name)


@pytest.mark.parametrize("split", list(FOLDERS))
def test_label_maps_agree_with_coco_masks(ade: Path, coco: Path, split: str) -> None:
    ground_truth = COCO(str(coco / "annotations" / f"instances_{split}.json"))
    checked = 0
    for image in ground_truth.dataset["images"]:
        labels = _labels(ade, split, image["file_name"])
        annotations = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=image["id"]))
        anywhere = np.zeros_like(labels, dtype=bool)
        for annotation in annotations:
            mask = ground_truth.annToMask(annotation).astype(bool)
            label = LABELS[annotation["category_id"]]
            # COCO keeps pixels whose centre is inside, Pillow every pixel an edge touches: one pixel apart
            assert (labels[_shrink(mask)] == label).all()
            assert (labels[mask] == label).mean() >= 0.95
            assert set(np.unique(labels[_grow(mask)]).tolist()) <= {0, label}
            assert (labels[_grow(mask)] == label).sum() >= mask.sum()
            anywhere |= _grow(_grow(mask))  # Pillow may fill a lone pixel past a triangle's sharp tip
            checked += 1
        assert (labels[~anywhere] == 0).all(), "labels outside every shape"
    assert checked >= len(ground_truth.dataset["images"])


@pytest.mark.parametrize("split", list(FOLDERS))
def test_label_maps_match_drawn_pixels(ade: Path, split: str) -> None:
    shapes = 0
    for path in sorted((ade / "annotations" / FOLDERS[split]).iterdir()):
        labels = _labels(ade, split, path.name)
        pixels = _pixels(ade, split, path.name)
        labelled = labels > 0
        for region in _regions(labelled):
            # one fill colour over the shape, plus at most an outline along its edge
            colours, counts = np.unique(pixels[region], axis=0, return_counts=True)
            assert len(colours) <= 2 and counts.max() >= 0.75 * region.sum()
            if len(colours) == 2:
                outline = colours[counts.argmin()]
                assert outline[0] == outline[1] == outline[2] < 48, "a second colour that is no outline"
                outlined = (pixels == outline).all(axis=-1) & region
                # along the edge (a pixel deeper at most where a triangle's tip is thin)
                assert (outlined & ~_shrink(region)).sum() >= 0.9 * outlined.sum()
                assert not (outlined & _shrink(_shrink(_shrink(region)))).any(), "outline pixels inside the shape"
            # ... and neither colour just outside it: the label map covers exactly what was drawn
            ring = _grow(_grow(region)) & ~region
            for colour in colours:
                assert not (pixels[ring] == colour).all(axis=-1).any(), "a shape's colour outside its label"
            shapes += 1
    assert shapes >= COUNTS[split]


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of `mask` (shapes never touch, so one per shape)."""
    remaining = mask.copy()
    regions = []
    while remaining.any():
        region = np.zeros_like(mask)
        region[tuple(np.argwhere(remaining)[0])] = True
        while True:
            grown = _grow(region) & remaining
            if (grown == region).all():
                break
            region = grown
        remaining &= ~region
        regions.append(region)
    return regions


def test_regions_split_shapes(ade: Path, coco: Path) -> None:
    """The component helper the test above relies on finds one region per COCO annotation."""
    ground_truth = json.loads((coco / "annotations" / "instances_train.json").read_text())
    for image in ground_truth["images"]:
        count = sum(annotation["image_id"] == image["id"] for annotation in ground_truth["annotations"])
        assert len(_regions(_labels(ade, "train", image["file_name"]) > 0)) == count


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    first = _files(make_shapes_dataset(tmp_path / "a", 4, 2, seed=11, layout="ade20k", **SMALL))
    again = _files(make_shapes_dataset(tmp_path / "b", 4, 2, seed=11, layout="ade20k", **SMALL))
    other = _files(make_shapes_dataset(tmp_path / "c", 4, 2, seed=12, layout="ade20k", **SMALL))
    assert len(first) == 2 * (4 + 2) + 1
    assert first == again
    assert first.keys() == other.keys()
    assert first["annotations/training/000001.png"] != other["annotations/training/000001.png"]
    assert first["images/validation/000001.png"] != other["images/validation/000001.png"]


def test_empty_val_split_gets_its_folders(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path, train_images=1, val_images=0, layout="ade20k", min_side=64, max_side=64)
    assert not list((root / "images" / "validation").iterdir())
    assert not list((root / "annotations" / "validation").iterdir())
    assert Image.open(root / "annotations" / "training" / "000001.png").size == (64, 64)


@pytest.mark.parametrize("layout", ["ADE20K", "ade", "voc", ""])
def test_unknown_layout_raises_before_writing(tmp_path: Path, layout: str) -> None:
    with pytest.raises(ValueError, match=r"layout must be one of 'coco', 'ade20k', got"):
        make_shapes_dataset(tmp_path / "out", train_images=1, val_images=0, layout=layout)
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_chosen_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--train-images", "2", "--val-images", "1", "--seed", "4"]
    assert main(["make-shapes", str(tmp_path / "ade"), *arguments, "--layout", "ade20k"]) == 0
    assert "ADE20K-layout segmentation dataset of 2 + 1 images" in capsys.readouterr().out
    expected = make_shapes_dataset(tmp_path / "api", 2, 1, seed=4, layout="ade20k")
    assert _files(tmp_path / "ade") == _files(expected)

    assert main(["make-shapes", str(tmp_path / "coco"), *arguments]) == 0
    assert "COCO-layout detection dataset of 2 + 1 images" in capsys.readouterr().out
    assert (tmp_path / "coco" / "annotations" / "instances_train.json").is_file()
    assert _files(tmp_path / "coco" / "train") == _files(tmp_path / "ade" / "images" / "training")

    with pytest.raises(SystemExit):
        main(["make-shapes", str(tmp_path / "bad"), *arguments, "--layout", "voc"])
    assert not (tmp_path / "bad").exists()
