"""Segmentation inference (test resize, sliding windows, logit resizing) and prediction files, on toy models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import assert_close
from focalnet.image_processing import load_image
from focalnet.segmentation.inference import (
    SegmentationPreprocessing,
    fit_scale,
    predict_logits,
    sliding_window_logits,
)
from focalnet.segmentation.predict import draw_overlay, palette, predict_images, save_label_map

NAMES = {0: "background", 1: "road", 2: "tree", 3: "sky"}


class PointwiseModel(nn.Module):
    """A 1x1 convolution to K logits: translation-equivariant and pointwise, so windows cannot matter."""

    def __init__(self, num_labels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_labels, 1)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator))
        self.config = SimpleNamespace(num_labels=num_labels, id2label={i: NAMES.get(i, f"c{i}") for i in range(4)})
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.calls.append((tuple(pixel_values.shape), self.training))
        return SimpleNamespace(logits=self.conv(pixel_values))


class WindowMeanModel(nn.Module):
    """Logits = the input's first channel plus its mean over the window: depends on the window seen."""

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        first = pixel_values[:, :1]
        return SimpleNamespace(logits=first + first.mean(dim=(-2, -1), keepdim=True))


# ------------------------------------------------------------------------------------------------
# preprocessing
def test_fit_scale_follows_mmsegmentation_keep_ratio_resize() -> None:
    assert fit_scale(480, 640, (2048, 512)) == (512, 683)  # short side to 512
    assert fit_scale(640, 480, (512, 2048)) == (683, 512)  # the scale's order does not matter
    assert fit_scale(100, 1000, (2048, 512)) == (205, 2048)  # capped by the long side: 2.048 * 100 + 0.5
    assert fit_scale(10, 10, (2048, 512)) == (512, 512)


def test_preprocessing_normalises_like_a_hand_computation() -> None:
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    result = SegmentationPreprocessing(image_mean=mean, image_std=std, test_scale=None)(pixels)
    expected = (pixels.double() / 255 - torch.tensor(mean).view(3, 1, 1).double()) / torch.tensor(std).view(3, 1, 1)
    assert result.dtype == torch.float32 and result.shape == (3, 5, 7)
    assert_close(result, expected, atol=1e-6, what="normalisation")


def test_preprocessing_resizes_to_the_test_scale() -> None:
    colour = (200, 100, 50)
    image = Image.new("RGB", (64, 48), colour)  # (width, height)
    result = SegmentationPreprocessing()(image)
    assert result.shape == (3, 512, 683)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    expected = ((torch.tensor(colour) / 255 - mean) / std).view(3, 1, 1).expand_as(result)
    assert_close(result, expected, atol=1e-5, what="a flat image stays flat")
    from_tensor = SegmentationPreprocessing()(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 48, 64))
    assert_close(from_tensor, result, what="tensor and PIL inputs")
    with pytest.raises(ValueError, match="uint8"):
        SegmentationPreprocessing()(torch.zeros(3, 4, 4))


def test_preprocessing_save_load_round_trip(tmp_path: Path) -> None:
    for original in (
        SegmentationPreprocessing(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0), test_scale=(1024, 256)),
        SegmentationPreprocessing(test_scale=None),
    ):
        path = original.save(tmp_path)
        assert path == tmp_path / "preprocessor_config.json"
        assert json.loads(path.read_text())["processor_type"] == "focalnet-segmentation"
        assert SegmentationPreprocessing.load(tmp_path) == original
    assert SegmentationPreprocessing.load(tmp_path / "nothing-here") == SegmentationPreprocessing()
    with pytest.raises(ValueError, match="colour_jitter"):
        SegmentationPreprocessing.from_dict({"test_scale": [512, 512], "colour_jitter": 0.1})
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json"):
        SegmentationPreprocessing.load(tmp_path)


# ------------------------------------------------------------------------------------------------
# logits
@pytest.mark.parametrize(
    ("size", "window", "stride"),
    [((37, 53), 16, 10), ((37, 53), (12, 20), None), ((7, 9), 16, None), ((20, 9), 16, 5), ((16, 32), 16, 16)],
)
def test_sliding_window_equals_whole_image_for_a_pointwise_model(size, window, stride) -> None:
    model = PointwiseModel()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = model(pixel_values).logits
        slid = sliding_window_logits(model, pixel_values, window, stride)
    assert_close(slid, whole, what=f"size {size} window {window} stride {stride}")


@pytest.mark.parametrize("transpose", [False, True])
def test_sliding_window_averages_overlaps_by_count(transpose: bool) -> None:
    # width 5, window 3, stride 2: windows [0, 3) and [2, 5); pixel 2 is covered twice
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).view(1, 1, 1, 5)
    # window [0, 3): mean 2 -> 3, 4, 5; window [2, 5): mean 4 -> 7, 8, 9; pixel 2: (5 + 7) / 2
    expected = torch.tensor([3.0, 4.0, 6.0, 8.0, 9.0]).view(1, 1, 1, 5)
    window, stride = (1, 3), (1, 2)
    if transpose:
        values, expected = values.transpose(-1, -2), expected.transpose(-1, -2)
        window, stride = window[::-1], stride[::-1]
    result = sliding_window_logits(WindowMeanModel(), values, window, stride)
    assert_close(result, expected, what="count-normalised average")


def test_sliding_window_default_stride_is_two_thirds_rounded() -> None:
    model = PointwiseModel()
    sliding_window_logits(model, torch.randn(1, 3, 4, 10), window=4)
    # stride round(8 / 3) = 3: (10 - 4 + 2) // 3 + 1 = 3 columns (a floored stride of 2 would give 4)
    assert [shape[-2:] for shape, _ in model.calls] == [(4, 4)] * 3


@pytest.mark.parametrize(
    ("window", "stride", "message"),
    [(0, None, "window"), ((4, -1), None, "window"), (4, 0, "stride"), (4, 5, "exceed"), ((4, 8), (4, 9), "exceed")],
)
def test_sliding_window_validates_window_and_stride(window, stride, message) -> None:
    with pytest.raises(ValueError, match=message):
        sliding_window_logits(PointwiseModel(), torch.randn(1, 3, 8, 8), window, stride)


def test_predict_logits_resizes_to_the_output_size_without_touching_the_mode() -> None:
    model = PointwiseModel().train()
    pixel_values = torch.randn(1, 3, 8, 12)
    logits = predict_logits(model, pixel_values, output_size=(13, 27))
    expected = F.interpolate(model(pixel_values).logits, size=(13, 27), mode="bilinear", align_corners=False)
    assert logits.shape == (1, 4, 13, 27) and logits.dtype == torch.float32 and not logits.requires_grad
    assert_close(logits, expected, what="bilinear, align_corners=False")
    assert model.training
    slid = predict_logits(model, pixel_values, output_size=(13, 27), window=5, stride=3)
    assert_close(slid, expected, what="sliding window then resize")
    with pytest.raises(ValueError, match="window"):
        predict_logits(model, pixel_values, stride=3)


# ------------------------------------------------------------------------------------------------
# files and drawings
def test_palette_is_the_pascal_voc_colour_map() -> None:
    assert palette(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    colours = palette(256)
    assert colours[:4] == palette(4) and colours[255] == (224, 224, 192)
    assert len(set(colours)) == 256


def test_save_label_map_round_trip(tmp_path: Path) -> None:
    labels = torch.randint(0, 4, (37, 53))
    path = save_label_map(labels, tmp_path / "small.png", num_labels=4)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (53, 37)
        assert image.getpalette()[:12] == [value for colour in palette(4) for value in colour]
        np.testing.assert_array_equal(np.array(image), labels.numpy())

    many = torch.randint(0, 300, (37, 53))
    many[0, 0] = 299
    path = save_label_map(many, tmp_path / "many.png", num_labels=300)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
        np.testing.assert_array_equal(np.array(image), many.numpy())
    with pytest.raises(ValueError, match=r"0\.\.255"):
        save_label_map(many, tmp_path / "bad.png", num_labels=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.png", "small.png"]


def test_draw_overlay_blends_and_lists_only_present_classes() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = torch.ones(37, 53, dtype=torch.long)
    labels[:, 30:] = 2
    labels[5:10, 5:10] = 255
    canvas = np.array(draw_overlay(Image.fromarray(rgb), labels, NAMES, alpha=0.5))
    assert canvas.shape[0] >= 37 and canvas.shape[1] > 53
    image_part, legend = canvas[:37, :53].astype(int), canvas[:, 53:].reshape(-1, 3)
    colours = np.array(palette(4))
    expected = np.rint(0.5 * rgb + 0.5 * colours[labels.clamp(max=3).numpy()]).astype(int)
    np.testing.assert_array_equal(image_part[20, :], expected[20, :])
    np.testing.assert_array_equal(image_part[5:10, 5:10], rgb[5:10, 5:10])  # ignored: the image itself

    def shown(colour) -> bool:
        return bool((legend == colour).all(axis=1).any())

    assert shown(colours[1]) and shown(colours[2])
    assert not shown(colours[3]), "an absent class must not be in the legend"


def test_draw_overlay_grows_the_canvas_for_a_long_legend() -> None:
    labels = (torch.arange(400) % 30).view(10, 40)
    canvas = np.array(draw_overlay(Image.new("RGB", (40, 10), (255, 255, 255)), labels, {}))
    assert canvas.shape[0] > 10 and canvas.shape[1] > 40
    legend = canvas[:, 40:].reshape(-1, 3)
    for colour in palette(30)[1:]:
        assert (legend == colour).all(axis=1).any(), f"no swatch for {colour}"


def test_predict_images_writes_maps_at_the_input_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    (inputs / "other").mkdir(parents=True)
    sizes = {"a.png": (53, 37), "other/a.jpg": (31, 20), "b.png": (20, 45)}  # (width, height)
    for name, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(inputs / name)
    (inputs / "corrupt.png").write_bytes(b"not an image at all")
    paths = [inputs / "a.png", inputs / "missing.png", inputs / "other/a.jpg", inputs / "corrupt.png", inputs / "b.png"]

    model = PointwiseModel().train()
    preprocessing = SegmentationPreprocessing(test_scale=(64, 32))
    wrapped = []

    def progress(items, description, total):
        wrapped.append((description, total))
        return items

    written, skipped = predict_images(
        model, preprocessing, paths, tmp_path / "out", window=16, stride=10, progress=progress
    )
    assert [p.name for p in written] == [
        f"{stem}_{kind}.png" for stem in ("a", "a-1", "b") for kind in ("labels", "overlay")
    ]
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in written)
    assert len(skipped) == 2
    assert skipped[0].startswith(f"{paths[1]}: ") and skipped[1].startswith(f"{paths[3]}: ")
    assert wrapped == [("segmenting", 5)]
    assert model.training and model.calls and not any(training for _, training in model.calls)

    for index, (width, height) in enumerate(sizes.values()):
        labels_path, overlay_path = written[2 * index], written[2 * index + 1]
        with Image.open(labels_path) as labels, Image.open(overlay_path) as overlay:
            assert labels.size == (width, height)
            assert overlay.width > width and overlay.height >= height
    image = load_image(inputs / "b.png")
    model.eval()
    logits = predict_logits(model, preprocessing(image).unsqueeze(0), (image.height, image.width), 16, 10)
    np.testing.assert_array_equal(np.array(Image.open(written[4])), logits.argmax(1)[0].numpy())
