"""`focalnet.visualization` and `focalnet visualize`: modulator maps, overlays, gate figures, reconstruction grids."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import focalnet
from conftest import randomize_, tiny_config
from focalnet.cli import main
from focalnet.visualization import (
    COLUMN_TITLES,
    HEADER,
    MARGIN,
    MIN_PANEL_HEIGHT,
    block_title,
    modulator_figure,
    modulator_maps,
    overlay,
    parse_blocks,
    reconstruct,
    reconstruction_grid,
    save_reconstruction_grid,
)

IMAGES = Path(__file__).parent / "data" / "images"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODEL_CLASSES = [
    focalnet.FocalNetModel,
    focalnet.FocalNetForImageClassification,
    focalnet.FocalNetForMaskedImageModeling,
]


def _model(cls=focalnet.FocalNetForImageClassification, **overrides):
    """A tiny model (depths [2, 1]: three blocks) with weights that make every map distinct."""
    config = tiny_config(depths=[2, 1], focal_levels=[2, 3], image_size=32, **overrides)
    return randomize_(cls(config), scale=0.15).eval()


# ------------------------------------------------------------------------------------------------
# modulator_maps
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_modulator_maps_are_the_channel_norms_of_the_modulators(cls) -> None:
    model = _model(cls)
    pixels = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        expected = [m.norm(dim=1) for m in model(pixels, output_modulators=True).modulators]
    maps = modulator_maps(model, pixels)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 6), (2, 8, 6), (2, 4, 3)]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
    selected = modulator_maps(model, pixels, blocks=[1, -1])
    torch.testing.assert_close(selected[0], expected[1])
    torch.testing.assert_close(selected[1], expected[2])


def test_modulator_maps_run_in_eval_mode_and_leave_the_mode_as_it_was() -> None:
    model = _model(drop_path_rate=0.5, hidden_dropout_prob=0.5)
    pixels = torch.randn(1, 3, 32, 32)
    evaluated = modulator_maps(model, pixels)
    model.train()
    model.classifier.eval()  # a mixed state must come back as it was, module by module
    in_training = modulator_maps(model, pixels)
    for got, want in zip(in_training, evaluated, strict=True):
        torch.testing.assert_close(got, want)  # no dropout or drop-path: eval mode was used
    assert model.training and model.focalnet.encoder.stages[0].layers[0].training
    assert not model.classifier.training
    assert all(not m.requires_grad for m in in_training)


@pytest.mark.parametrize("blocks", [[3], [-4], [0, 7]])
def test_modulator_maps_reject_blocks_out_of_range(blocks) -> None:
    with pytest.raises(ValueError, match="3 blocks"):
        modulator_maps(_model(), torch.randn(1, 3, 32, 32), blocks=blocks)


# ------------------------------------------------------------------------------------------------
# parse_blocks, block_title
def test_parse_blocks() -> None:
    depths = [2, 1, 3]
    assert parse_blocks("last", depths) == [1, 2, 5]
    assert parse_blocks(" ALL ", depths) == [0, 1, 2, 3, 4, 5]
    assert parse_blocks("0, 4,-1", depths) == [0, 4, 5]
    assert parse_blocks("-6", depths) == [0]
    assert [block_title(i, depths) for i in (0, 1, 2, 5)] == [
        "stage 1 block 1",
        "stage 1 block 2",
        "stage 2 block 1",
        "stage 3 block 3",
    ]


@pytest.mark.parametrize("spec", ["first", "", "1,,2", "1.5"])
def test_parse_blocks_rejects_unknown_specs(spec) -> None:
    with pytest.raises(ValueError, match="'last', 'all' or comma-separated"):
        parse_blocks(spec, [2, 2])


@pytest.mark.parametrize("spec", ["4", "-5", "0,4"])
def test_parse_blocks_rejects_indices_out_of_range(spec) -> None:
    with pytest.raises(ValueError, match="out of range: the model has 4 blocks"):
        parse_blocks(spec, [2, 2])


# ------------------------------------------------------------------------------------------------
# overlay
def _photo(width: int = 40, height: int = 30) -> Image.Image:
    return Image.open(IMAGES / "chelsea.jpg").convert("RGB").resize((width, height))


def test_overlay_keeps_the_image_size_and_blends() -> None:
    image = _photo()
    heat_map = torch.rand(5, 7)
    blended = overlay(image, heat_map, alpha=0.6)
    assert blended.size == image.size and blended.mode == "RGB"
    assert np.array_equal(np.asarray(overlay(image, heat_map, alpha=0.0)), np.asarray(image))
    assert not np.array_equal(np.asarray(blended), np.asarray(image))
    # min-max normalisation: an affine change of the map changes nothing
    assert np.array_equal(np.asarray(overlay(image, 3 * heat_map + 7, alpha=0.6)), np.asarray(blended))
    # numpy images work alike
    assert np.array_equal(np.asarray(overlay(np.asarray(image), heat_map.numpy(), alpha=0.6)), np.asarray(blended))


def test_overlay_at_alpha_one_shows_the_colormap_of_the_normalised_map() -> None:
    image = _photo()
    heat_map = np.random.default_rng(0).random((30, 40)).astype(np.float32) * 5 - 2  # the image's size
    coloured = np.asarray(overlay(image, heat_map, alpha=1.0, cmap="inferno"))
    normalised = (heat_map - heat_map.min()) / (heat_map.max() - heat_map.min())
    colormap = matplotlib.colormaps["inferno"]
    for row, col in [(0, 0), (7, 23), (29, 39)]:
        expected = colormap(float(normalised[row, col]), bytes=True)[:3]
        assert tuple(coloured[row, col]) == tuple(expected)


def test_overlay_of_a_constant_map_is_the_colour_of_zero() -> None:
    coloured = np.asarray(overlay(_photo(), torch.full((4, 4), 3.0), alpha=1.0))
    expected = matplotlib.colormaps["jet"](0.0, bytes=True)[:3]
    assert (coloured == np.array(expected, dtype=np.uint8)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heat_map": torch.rand(4, 4), "alpha": 1.5}, "alpha"),
        ({"heat_map": torch.rand(4, 4), "alpha": -0.1}, "alpha"),
        ({"heat_map": torch.rand(1, 4, 4)}, "2-D"),
        ({"heat_map": torch.rand(4, 4), "cmap": "no-such-map"}, "colormap"),
    ],
)
def test_overlay_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        overlay(_photo(), **kwargs)


# ------------------------------------------------------------------------------------------------
# modulator_figure
def test_modulator_figure_panels_and_shared_symmetric_gate_scale() -> None:
    model = _model(id2label={0: "cat", 1: "dog", 2: "bird"})
    model.train()
    pixels = torch.randn(1, 3, 32, 32)
    figure = modulator_figure(model, pixels, MEAN, STD, blocks="all", top_k=2)
    assert model.training
    with torch.no_grad():
        out = model.eval()(pixels, output_modulators=True)
    titles = [ax.get_title() for ax in figure.get_axes() if ax.get_title()]
    assert {"stage 1 block 1", "stage 1 block 2", "stage 2 block 1"} <= set(titles)
    assert {"gate level 1", "gate level 2", "gate level 3", "global gate"} <= set(titles)
    top = out.logits.softmax(-1)[0].topk(2)
    names = ["cat", "dog", "bird"]
    lines = [f"{names[i]}  {s:.1%}" for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    expected_title = "\n".join(lines)
    assert expected_title in titles and len(lines) == 2
    gate_images = [im for ax in figure.get_axes() for im in ax.get_images() if im.get_cmap().name == "RdBu_r"]
    assert len(gate_images) == 4  # focal_levels of the last stage (3) + the global gate
    limit = out.gates[-1].abs().max().item()
    for image in gate_images:
        assert image.get_clim() == pytest.approx((-limit, limit))
    for image, gate in zip(gate_images, out.gates[-1][0], strict=True):
        np.testing.assert_allclose(image.get_array(), gate.numpy(), rtol=1e-6)
    assert any(ax.get_label() == "<colorbar>" for ax in figure.get_axes())


# ------------------------------------------------------------------------------------------------
# reconstruction_grid
def _normalised(pixels: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 (B, C, H, W) pixels -> normalised float pixel_values."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (torch.from_numpy(pixels).double() / 255 - m) / s


def test_a_multi_label_figure_scores_its_labels_as_predict_does() -> None:
    """Sigmoid per label, as `focalnet predict` and `focalnet serve` answer a multi-label model."""
    model = _model(id2label={0: "cat", 1: "dog", 2: "bird"}, problem_type="multi_label_classification")
    pixels = torch.randn(1, 3, 32, 32)
    figure = modulator_figure(model, pixels, MEAN, STD, top_k=3)
    with torch.no_grad():
        top = model(pixels).logits.sigmoid()[0].topk(3)
    names = ["cat", "dog", "bird"]
    title = "\n".join(f"{names[i]}  {s:.1%}" for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))
    assert title in [ax.get_title() for ax in figure.get_axes()]


def _panel(grid: np.ndarray, row: int, col: int, height: int, width: int, scale: int) -> np.ndarray:
    """The panel of the documented geometry, and a check that it is an exact nearest upscale."""
    h, w = height * scale, width * scale
    top, left = HEADER + MARGIN + row * (h + MARGIN), MARGIN + col * (w + MARGIN)
    panel = grid[top : top + h, left : left + w]
    small = panel[::scale, ::scale]
    assert np.array_equal(panel, small.repeat(scale, 0).repeat(scale, 1))
    return small.astype(int)


def test_reconstruction_grid_geometry_and_panels() -> None:
    rng = np.random.default_rng(0)
    batch, height, width = 2, 12, 20
    pixels = rng.integers(0, 256, (batch, 3, height, width), dtype=np.uint8)
    rebuilt = rng.integers(0, 256, (batch, 3, height, width), dtype=np.uint8)
    mask = torch.from_numpy(rng.random((batch, 1, height, width)) < 0.5).float()
    grid_image = reconstruction_grid(_normalised(pixels), _normalised(rebuilt), mask, MEAN, STD)
    scale = math.ceil(MIN_PANEL_HEIGHT / height)
    assert scale == 8
    assert grid_image.size == (4 * width * scale + 5 * MARGIN, HEADER + batch * height * scale + (batch + 1) * MARGIN)
    assert grid_image.mode == "RGB"
    grid = np.asarray(grid_image)
    hidden = mask.numpy()[:, 0, :, :, None].astype(bool)
    for row in range(batch):
        original, rebuilt_hwc = pixels[row].transpose(1, 2, 0).astype(int), rebuilt[row].transpose(1, 2, 0).astype(int)
        shown = [_panel(grid, row, col, height, width, scale) for col in range(4)]
        assert np.abs(shown[0] - original).max() <= 1
        assert np.abs(shown[2] - rebuilt_hwc).max() <= 1
        masked = np.broadcast_to(hidden[row], original.shape)
        assert (np.abs(shown[1][masked] - 128) <= 1).all()
        assert np.array_equal(shown[1][~masked], shown[0][~masked])
        assert np.array_equal(shown[3][~masked], shown[0][~masked])
        assert np.array_equal(shown[3][masked], shown[2][masked])
    # margins are white; the header holds the titles
    assert (grid[HEADER : HEADER + MARGIN] == 255).all()
    assert (grid[:, :MARGIN] == 255).all() and (grid[-MARGIN:] == 255).all()
    panel_w = width * scale
    for col in range(len(COLUMN_TITLES)):
        left = MARGIN + col * (panel_w + MARGIN)
        assert (grid[:HEADER, left : left + panel_w] < 128).any(), f"no title above column {col}"


def test_reconstruction_grid_scale_and_one_channel_as_grey(tmp_path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (1, 1, 10, 6), dtype=np.uint8)
    values = _normalised(pixels, mean=[0.5], std=[0.25])
    mask = torch.zeros(1, 1, 10, 6)
    grid = reconstruction_grid(values, values, mask, 0.5, 0.25, scale=3)
    assert grid.size == (4 * 6 * 3 + 5 * MARGIN, HEADER + 10 * 3 + 2 * MARGIN)
    panel = _panel(np.asarray(grid), 0, 0, 10, 6, 3)
    assert (panel == panel[..., :1]).all()  # R = G = B
    assert np.abs(panel[..., 0] - pixels[0, 0]).max() <= 1
    path = save_reconstruction_grid(values, values, mask, 0.5, 0.25, tmp_path / "grid.png", scale=3)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(grid))
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left


def test_reconstruction_grid_rejects_mismatched_inputs() -> None:
    values = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="pixel_mask must have shape"):
        reconstruction_grid(values, values, torch.zeros(2, 8, 8), MEAN, STD)
    with pytest.raises(ValueError, match="must match"):
        reconstruction_grid(values, values[:, :, :4], torch.zeros(2, 1, 8, 8), MEAN, STD)
    with pytest.raises(ValueError, match="scale"):
        reconstruction_grid(values, values, torch.zeros(2, 1, 8, 8), MEAN, STD, scale=0)


# ------------------------------------------------------------------------------------------------
# reconstruct: the seeded mask
def test_reconstruct_masks_with_the_seeded_generator_and_the_stored_cell_size() -> None:
    model = _model(focalnet.FocalNetForMaskedImageModeling)
    pixels = torch.randn(1, 3, 32, 32)
    rebuilt, mask = reconstruct(model, pixels, mask_ratio=0.6, seed=3)
    assert rebuilt.shape == pixels.shape and mask.shape == (1, 1, 32, 32)
    assert mask.mean().item() == pytest.approx(10 / 16)  # 8-px cells (encoder_stride): ceil(0.6 * 16) hidden
    generator = focalnet.MaskGenerator(32, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)
    expected = generator(torch.Generator().manual_seed(3)).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(mask[0, 0].bool(), expected)
    assert torch.equal(reconstruct(model, pixels, seed=3)[1], mask)
    model.config.extra["mask_patch_size"] = 16  # what pretraining stores
    assert reconstruct(model, pixels, mask_ratio=0.6)[1].mean().item() == pytest.approx(3 / 4)


# ------------------------------------------------------------------------------------------------
# the command line
@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder of three images: a bundled photo, a generated PNG, and another photo in a sub-folder."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    shutil.copy(IMAGES / "chelsea.jpg", folder / "cat.jpg")
    shutil.copy(IMAGES / "rocket.jpg", folder / "more" / "cat.jpg")  # same stem: a second name is needed
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(folder / "noise.png")
    return folder


def _saved(tmp_path: Path, cls, **overrides) -> Path:
    directory = tmp_path / cls.__name__
    _model(cls, **overrides).save_pretrained(directory)
    return directory


def _check_pngs(output: Path, names: set[str]) -> list[Image.Image]:
    assert {p.name for p in output.iterdir()} == names
    for path in output.iterdir():
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    return [Image.open(output / name) for name in sorted(names)]


def test_cli_visualize_classifier(tmp_path, inputs, capsys) -> None:
    model = _saved(tmp_path, focalnet.FocalNetForImageClassification)
    output = tmp_path / "out"
    code = main(["visualize", str(inputs), "--model", str(model), "--output-dir", str(output), "--blocks", "all"])
    assert code == 0
    _check_pngs(output, {"cat.png", "cat-1.png", "noise.png"})
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(output / name) for name in ("cat.png", "cat-1.png", "noise.png"))


def test_cli_visualize_masked_image_model(tmp_path, inputs) -> None:
    model = _saved(tmp_path, focalnet.FocalNetForMaskedImageModeling)
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    del config["architectures"]  # the decoder weights alone must tell it is a SimMIM model
    config_path.write_text(json.dumps(config))
    output = tmp_path / "out"
    assert main(["visualize", str(inputs / "noise.png"), "--model", str(model), "--output-dir", str(output)]) == 0
    (grid,) = _check_pngs(output, {"noise.png"})
    scale = math.ceil(MIN_PANEL_HEIGHT / 32)  # the processor crops to the config's 32 px
    assert grid.size == (4 * 32 * scale + 5 * MARGIN, HEADER + 32 * scale + 2 * MARGIN)
    first = (output / "noise.png").read_bytes()
    assert main(["visualize", str(inputs / "noise.png"), "--model", str(model), "--output-dir", str(output)]) == 0
    assert (output / "noise.png").read_bytes() == first  # the seeded mask makes it reproducible
    args = ["visualize", str(inputs / "noise.png"), "--model", str(model), "--output-dir", str(output), "--seed", "1"]
    assert main(args) == 0
    assert (output / "noise.png").read_bytes() != first


@pytest.mark.parametrize("cls", [focalnet.FocalNetForImageClassification, focalnet.FocalNetForMaskedImageModeling])
def test_cli_visualize_skips_unreadable_images(tmp_path, inputs, capsys, cls) -> None:
    bad = inputs / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG file at all")
    model = _saved(tmp_path, cls)
    output = tmp_path / "out"
    args = ["visualize", str(inputs / "noise.png"), str(bad), str(inputs / "cat.jpg"), "--model", str(model)]
    assert main([*args, "--output-dir", str(output)]) == 1
    _check_pngs(output, {"cat.png", "noise.png"})
    err = capsys.readouterr().err
    assert f"skipped {bad}:" in err
    assert "1 of 3 images could not be read" in err


def test_cli_visualize_needs_a_classifier_or_a_simmim_model(tmp_path, inputs, capsys) -> None:
    model = _saved(tmp_path, focalnet.FocalNetModel)
    output = tmp_path / "out"
    assert main(["visualize", str(inputs), "--model", str(model), "--output-dir", str(output)]) == 2
    assert "neither an image classifier nor a masked-image-modeling model" in capsys.readouterr().err
    assert not output.exists()
