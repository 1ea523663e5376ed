"""ADE20K-layout semantic segmentation data: finding splits, reading class names and label maps (clear
errors, reduce_labels), skipped samples with warnings, and augmentation that keeps pixels and labels
together (rescale, crop with a class limit, flip, padding) as well as the evaluation transform."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from focalnet.detection.synthetic import ADE20K_CLASSES, make_shapes_dataset
from focalnet.image_processing import IMAGENET_MEAN, IMAGENET_STD, load_image
from focalnet.segmentation.data import (
    LabelError,
    RandomCropWithClassLimit,
    RandomRescale,
    SegmentationDataset,
    collate_segmentation,
    eval_transform,
    find_split,
    read_class_names,
    read_label_map,
    train_transform,
)
from focalnet.segmentation.inference import SegmentationPreprocessing, fit_scale
from focalnet.training.data import seeded

NUM_LABELS = len(ADE20K_CLASSES)  # 4: background, circle, square, triangle
TRAIN, VAL = 8, 4
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
# a small version of mmsegmentation's ADE20K pipeline, sized to the 64..96 pixel synthetic images
AUGMENT = dict(
    crop_size=48,
    scale=(128, 64),
    ratio_range=(0.5, 2.0),
    max_class_ratio=0.75,
    hflip=0.5,
    photometric=True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
# in the broken copy: 000002 has a label map of another size, 000003 none, 000004 an unreadable
# image, 000005 a label outside 0..3
MISMATCH, MISSING, UNREADABLE, OUT_OF_RANGE = 1, 2, 3, 4


@pytest.fixture(scope="module")
def ade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    return make_shapes_dataset(root, TRAIN, VAL, seed=5, min_side=64, max_side=96, layout="ade20k")


@pytest.fixture(scope="module")
def broken(ade: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken") / "ade"
    shutil.copytree(ade, root)
    images, labels = root / "images" / "training", root / "annotations" / "training"
    width, height = Image.open(images / "000002.png").size
    write_png(labels / "000002.png", np.zeros((height, width + 3), dtype=np.uint8))
    (labels / "000003.png").unlink()
    (images / "000004.png").write_bytes(b"not a png at all")
    (images / "notes.txt").write_text("not an image: not listed")
    values = np.asarray(Image.open(labels / "000005.png")).copy()
    values[0, 0] = 9
    write_png(labels / "000005.png", values)
    return root


def write_png(path: Path, values: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(values, mode=mode).save(path, format="PNG")
    return path


def quiet_split(root: Path, split: str = "train"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return find_split(root, split)


# ------------------------------------------------------------------------------------------------
# finding the files
def test_find_split_pairs_images_and_label_maps(ade: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = find_split(ade, "train"), find_split(ade, "val")
        again = find_split(ade, "training")  # the folder name works too
    assert (len(train), len(val)) == (TRAIN, VAL)
    assert train.images == sorted((ade / "images" / "training").glob("*.png"))
    assert [p.name for p in train.images] == [f"{i:06d}.png" for i in range(1, TRAIN + 1)]
    assert again.images == train.images and again.labels == train.labels
    for split, folder in ((train, "training"), (val, "validation")):
        assert split.missing == 0
        assert all(p.parent == ade / "images" / folder for p in split.images)
        for image, label in zip(split.images, split.labels, strict=True):
            assert label == ade / "annotations" / folder / f"{image.stem}.png"
            assert label.is_file()


def test_find_split_counts_missing_label_maps_in_one_warning(broken: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        split = find_split(broken, "train")
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert f"1 of {TRAIN} images" in messages[0] and "have no label map" in messages[0]
    assert str(broken / "images" / "training") in messages[0]
    assert len(split) == TRAIN and split.missing == 1
    assert [p.name for p in split.images] == [f"{i:06d}.png" for i in range(1, TRAIN + 1)]
    assert not split.labels[MISSING].is_file() and split.labels[MISSING].stem == "000003"


def test_find_split_rejects_other_layouts(ade: Path, tmp_path: Path) -> None:
    (tmp_path / "coco" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"not an ADE20K-layout dataset.*images[/\\]training"):
        find_split(tmp_path / "coco", "train")
    empty = tmp_path / "empty" / "images" / "validation"
    empty.mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        find_split(tmp_path / "empty", "val")


# ------------------------------------------------------------------------------------------------
# class names
def test_read_class_names(ade: Path, tmp_path: Path) -> None:
    assert read_class_names(ade) == list(ADE20K_CLASSES)
    (tmp_path / "labels.txt").write_text("\nwall\n\n  building \nsky\n\n", encoding="utf-8")
    assert read_class_names(tmp_path) == ["wall", "building", "sky"]
    (tmp_path / "labels.txt").write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lists no class names"):
        read_class_names(tmp_path)
    with pytest.raises(FileNotFoundError, match="class_names"):
        read_class_names(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# label maps
def test_read_label_map_plain_values(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 3], [255, 3, 2, 1], [1, 1, 255, 0]], dtype=np.uint8)
    labels = read_label_map(write_png(tmp_path / "a.png", values), NUM_LABELS)
    assert labels.dtype == torch.int64 and labels.shape == (3, 4)
    assert torch.equal(labels, torch.from_numpy(values.astype(np.int64)))


def test_read_label_map_reduce_labels(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 3], [150, 255, 0, 77]], dtype=np.uint8)
    labels = read_label_map(write_png(tmp_path / "a.png", values), 150, reduce_labels=True)
    assert labels.tolist() == [[255, 0, 1, 2], [149, 255, 255, 76]]
    # 151 becomes 150, out of range for 150 classes; the reduce_labels hint is only for when it is off
    path = write_png(tmp_path / "b.png", np.array([[0, 151]], dtype=np.uint8))
    with pytest.raises(LabelError, match="holds label 150") as error:
        read_label_map(path, 150, reduce_labels=True)
    assert "reduce_labels" not in str(error.value)


@pytest.mark.parametrize("value", [4, 254])
def test_read_label_map_out_of_range(tmp_path: Path, value: int) -> None:
    path = write_png(tmp_path / "bad.png", np.array([[0, 1], [value, 255]], dtype=np.uint8))
    with pytest.raises(LabelError) as error:
        read_label_map(path, NUM_LABELS)
    message = str(error.value)
    assert str(path) in message and f"holds label {value}" in message and "outside 0..3" in message
    assert "reduce_labels: true" in message


def test_read_label_map_rejects_colour_and_corrupt_files(tmp_path: Path) -> None:
    rgb = write_png(tmp_path / "rgb.png", np.zeros((4, 5, 3), dtype=np.uint8))
    with pytest.raises(LabelError, match=r"rgb\.png has 3 channels"):
        read_label_map(rgb, NUM_LABELS)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 8)
    with pytest.raises(LabelError, match=r"cannot read the label map .*corrupt\.png"):
        read_label_map(corrupt, NUM_LABELS)
    data = write_png(tmp_path / "full.png", np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(LabelError, match="cannot read the label map"):
        read_label_map(truncated, 256)


def test_read_label_map_palette_images_give_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    palette = [channel for k in range(256) for channel in (200 - k % 200, 30 + k % 200, 7)]
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_label_map(tmp_path / "p.png", NUM_LABELS).tolist() == indices.tolist()


# ------------------------------------------------------------------------------------------------
# samples
def test_dataset_skips_broken_samples_with_warnings(broken: Path) -> None:
    dataset = SegmentationDataset(quiet_split(broken), NUM_LABELS, eval_transform(SegmentationPreprocessing()))
    assert len(dataset) == TRAIN
    image = Image.open(broken / "images" / "training" / "000002.png")
    with pytest.warns(UserWarning, match="skipping") as record:
        assert dataset[(MISMATCH, 0)] is None
    message = str(record[0].message)
    assert f"{image.width}x{image.height}" in message and f"{image.width + 3}x{image.height}" in message
    with pytest.warns(UserWarning, match=r"skipping .*000003\.png: no label map"):
        assert dataset[(MISSING, 0)] is None
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*000004\.png"):
        assert dataset[(UNREADABLE, 0)] is None
    with pytest.raises(LabelError, match=r"000005\.png holds label 9"):
        dataset[(OUT_OF_RANGE, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset[(0, 0)] is not None


def test_collate_drops_and_counts_missing_samples(broken: Path) -> None:
    native = eval_transform(SegmentationPreprocessing(test_scale=None))
    dataset = SegmentationDataset(quiet_split(broken), NUM_LABELS, native)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = [dataset[(index, 0)] for index in (0, MISMATCH, MISSING, UNREADABLE, 5, 6)]
    assert [sample is None for sample in samples] == [False, True, True, True, False, False]
    pixels, labels, skipped = collate_segmentation(samples)
    assert skipped == 3 and len(pixels) == len(labels) == 3
    good = [sample for sample in samples if sample is not None]
    for (expected_pixels, expected_labels), got_pixels, got_labels in zip(good, pixels, labels, strict=True):
        assert got_pixels is expected_pixels and got_labels is expected_labels
    assert collate_segmentation([None, None]) == ([], [], 2)


# ------------------------------------------------------------------------------------------------
# training augmentation
def test_train_samples_shapes_and_determinism(ade: Path) -> None:
    dataset = SegmentationDataset(find_split(ade, "train"), NUM_LABELS, train_transform(**AUGMENT))
    crop = AUGMENT["crop_size"]
    state = torch.get_rng_state()
    for index in range(TRAIN):
        pixels, labels = dataset[(index, 11)]
        assert pixels.shape == (3, crop, crop) and pixels.dtype == torch.float32
        assert labels.shape == (crop, crop) and labels.dtype == torch.int64
        assert type(pixels) is torch.Tensor and type(labels) is torch.Tensor
        again_pixels, again_labels = dataset[(index, 11)]
        assert torch.equal(pixels, again_pixels) and torch.equal(labels, again_labels)
        other_pixels, _ = dataset[(index, 12)]
        assert not torch.equal(pixels, other_pixels)
        original = read_label_map(dataset.split.labels[index], NUM_LABELS)
        assert set(labels.unique().tolist()) <= set(original.unique().tolist()) | {255}
    assert torch.equal(torch.get_rng_state(), state), "the outer random state is kept"


def test_nearest_label_resizing_makes_no_new_values() -> None:
    rng = np.random.default_rng(1)
    blocks = rng.choice(np.array([1, 5, 9]), size=(9, 12))
    labels = torch.from_numpy(np.kron(blocks, np.ones((7, 7), dtype=np.int64)))  # 63 x 84
    image = Image.fromarray(rng.integers(0, 256, (63, 84, 3), dtype=np.uint8))
    transform = train_transform(**{**AUGMENT, "crop_size": 40, "ratio_range": (0.3, 2.5)})
    seen: set[int] = set()
    for seed in range(8):
        _, out = seeded(seed, transform, image, labels)
        seen |= set(out.unique().tolist())
    assert seen <= {1, 5, 9, 255} and {1, 5, 9} <= seen


def test_padding_has_ignore_labels_and_zero_pixels() -> None:
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(1, 4, (40, 60)))  # no 255 of its own
    fixed = train_transform(**{**AUGMENT, "crop_size": 64, "scale": (60, 30), "ratio_range": (1.0, 1.0)})
    height, width = fit_scale(40, 60, (60, 30))
    assert (height, width) == (30, 45)
    for seed in range(3):
        pixels, mask = seeded(seed, fixed, image, labels)
        assert pixels.shape == (3, 64, 64) and mask.shape == (64, 64)
        assert (mask[:height, :width] != 255).all()
        assert (mask[height:] == 255).all() and (mask[:, width:] == 255).all()
        assert (pixels[:, height:] == 0).all() and (pixels[:, :, width:] == 0).all()
        assert (pixels[:, :height, :width] != 0).float().mean() > 0.99
    random = train_transform(**{**AUGMENT, "crop_size": 64, "scale": (60, 30), "ratio_range": (0.5, 1.8)})
    for seed in range(6):
        pixels, mask = seeded(seed, random, image, labels)
        valid = mask != 255
        rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert valid[:rows, :cols].all() and not valid[rows:].any() and not valid[:, cols:].any()
        assert (pixels[:, ~valid] == 0).all()


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_pixels_and_labels_stay_aligned(hflip: float) -> None:
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 4, (3, 4))
    labels = np.kron(blocks, np.ones((40, 40), dtype=np.int64))  # 120 x 160, an asymmetric block layout
    grey = (40 + 60 * labels).astype(np.uint8)
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    transform = train_transform(
        crop_size=96,
        scale=(160, 120),
        ratio_range=(0.5, 2.0),
        max_class_ratio=0.75,
        hflip=hflip,
        photometric=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    for seed in range(4):
        pixels, mask = seeded(seed, transform, image, torch.from_numpy(labels))
        values = (pixels * STD + MEAN) * 255
        labelled = mask != 255
        assert (values.amax(0) - values.amin(0))[labelled].max() < 2, "still grey"
        assert (values[:, ~labelled].abs() < 255 * 2.7).all()
        decoded = ((values.mean(0) - 40) / 60).round().clamp(0, 3).long()
        padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        neighbours = torch.stack([padded[dy : dy + 96, dx : dx + 96] for dy in range(3) for dx in range(3)])
        interior = labelled & (neighbours == mask).all(0)
        assert interior.sum() > 0.5 * labelled.sum() > 0
        assert (decoded[interior] == mask[interior]).float().mean() >= 0.95
        assert (decoded[labelled] == mask[labelled]).float().mean() >= 0.85


def test_random_rescale_sizes_stay_within_the_ratio_range() -> None:
    height, width, scale, (low, high) = 90, 120, (256, 64), (0.5, 2.0)
    image = tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(height, width, dtype=torch.int64))
    base = min(max(scale) / max(height, width), min(scale) / min(height, width))
    sizes = set()
    for seed in range(10):
        out_image, out_mask = seeded(seed, RandomRescale(scale, (low, high)), image, mask)
        size = tuple(out_image.shape[-2:])
        assert tuple(out_mask.shape) == size and isinstance(out_mask, tv_tensors.Mask)
        # some factor in [low, high] * base gives this size through fit_scale's rounding
        start = max(low * base, (size[0] - 0.5) / height, (size[1] - 0.5) / width)
        stop = min(high * base, (size[0] + 0.5) / height, (size[1] + 0.5) / width)
        assert start <= stop + 1e-9, (seed, size)
        assert fit_scale(height, width, (scale[0] * low, scale[1] * low)) <= size
        assert size <= fit_scale(height, width, (scale[0] * high, scale[1] * high))
        sizes.add(size)
    assert len(sizes) >= 5
    for ratio in (0.5, 1.0, 2.0):
        out_image, _ = RandomRescale(scale, (ratio, ratio))(image, mask)
        assert tuple(out_image.shape[-2:]) == fit_scale(height, width, (256 * ratio, 64 * ratio))


def coordinate_image(height: int, width: int) -> tv_tensors.Image:
    """An image whose first two channels hold each pixel's row and column, to locate a crop."""
    rows = torch.arange(height).view(height, 1).expand(height, width)
    cols = torch.arange(width).view(1, width).expand(height, width)
    return tv_tensors.Image(torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8))


def located_crop(crop: RandomCropWithClassLimit, seed: int, mask: torch.Tensor) -> torch.Tensor:
    """The cropped mask, after checking that it is the crop of the image's position."""
    height, width = mask.shape
    image, cropped = seeded(seed, crop, coordinate_image(height, width), tv_tensors.Mask(mask))
    top, left = int(image[0, 0, 0]), int(image[1, 0, 0])
    assert torch.equal(cropped, mask[top : top + crop.size, left : left + crop.size])
    return cropped


def test_crop_with_class_limit() -> None:
    mask = torch.zeros(128, 128, dtype=torch.int64)
    mask[40:88, 40:88] = 1
    mask[:4] = 255  # ignored pixels do not count
    dominant = []
    for seed in range(20):
        cropped = located_crop(RandomCropWithClassLimit(64, 0.75), seed, mask)
        assert cropped.shape == (64, 64)
        counts = torch.bincount(cropped[cropped != 255].flatten(), minlength=2)
        assert (counts > 0).all() and counts.max() / counts.sum() < 0.75, seed
        unlimited = located_crop(RandomCropWithClassLimit(64, 1.0), seed, mask)
        assert unlimited.shape == (64, 64)
        counts = torch.bincount(unlimited[unlimited != 255].flatten(), minlength=2)
        dominant.append(float(counts.max() / counts.sum()))
    assert max(dominant) >= 0.75, "without the limit, some crops are dominated by one class"
    # no crop can satisfy the limit: the last try is kept, at the right size
    uniform = torch.full((100, 90), 2, dtype=torch.int64)
    assert located_crop(RandomCropWithClassLimit(64, 0.75), 0, uniform).shape == (64, 64)
    # a side smaller than the crop is kept whole
    small = torch.from_numpy(np.random.default_rng(4).integers(0, 3, (40, 100)))
    assert located_crop(RandomCropWithClassLimit(64, 0.75), 1, small).shape == (40, 64)


# ------------------------------------------------------------------------------------------------
# evaluation
def test_eval_samples_resize_pixels_only(ade: Path) -> None:
    scaled = SegmentationPreprocessing(test_scale=(128, 48))
    dataset = SegmentationDataset(find_split(ade, "val"), NUM_LABELS, eval_transform(scaled))
    unscaled = eval_transform(SegmentationPreprocessing(test_scale=None))
    native = SegmentationDataset(find_split(ade, "val"), NUM_LABELS, unscaled)
    reduced = SegmentationDataset(find_split(ade, "val"), NUM_LABELS, eval_transform(scaled), reduce_labels=True)
    for index in range(VAL):
        image = load_image(dataset.split.images[index])
        original = torch.from_numpy(np.asarray(Image.open(dataset.split.labels[index])).astype(np.int64))
        pixels, labels = dataset[(index, 0)]
        assert pixels.shape == (3, *fit_scale(image.height, image.width, (128, 48)))
        assert pixels.shape[-2:] != (image.height, image.width)
        assert torch.allclose(pixels, scaled(image))
        assert torch.equal(labels, original) and labels.shape == (image.height, image.width)
        plain, _ = native[(index, 0)]
        expected = (TF.pil_to_tensor(image).float() / 255 - MEAN) / STD
        assert torch.allclose(plain, expected, atol=1e-5)
        _, reduced_labels = reduced[(index, 0)]
        assert torch.equal(reduced_labels, torch.where(original == 0, 255, original - 1))
