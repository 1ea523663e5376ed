"""`FocalNetImageProcessor` against its oracles, on real photographs (tests/data/images, see NOTICE.md).

Oracles: transformers' BitImageProcessor on its PIL backend (`BitImageProcessorPil`) for the hub
pipeline, timm's eval transform for timm, a torchvision pipeline written from the SPEC for the
original repository. Odd image modes are made from the photographs in `tmp_path`.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms
from transformers import BitImageProcessor, BitImageProcessorPil

from conftest import assert_close, max_diff
from focalnet.image_processing import (
    CONFIG_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FocalNetImageProcessor,
    load_image,
)

IMAGES = Path(__file__).parent / "data" / "images"
PHOTOS = ["chelsea", "rocket", "astronaut"]  # landscape 400x267, portrait 210x321 (< 256), square 300x300

# microsoft/focalnet-tiny's preprocessor_config.json
HUB_SETTINGS = dict(
    do_resize=True,
    size={"shortest_edge": 256},
    resample=2,
    do_center_crop=True,
    crop_size={"height": 224, "width": 224},
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=list(IMAGENET_MEAN),
    image_std=list(IMAGENET_STD),
    do_convert_rgb=True,
)
# timm's pretrained configs: a 224 model (crop_pct 0.9) and a 384 model (crop_pct 1.0)
TIMM_CONFIGS = {224: "focalnet_tiny_srf.ms_in1k", 384: "focalnet_large_fl3.ms_in22k"}


def photo_path(name: str) -> Path:
    return IMAGES / f"{name}.jpg"


def photo(name: str) -> Image.Image:
    with Image.open(photo_path(name)) as image:
        return image.convert("RGB")


def pixels(processor: FocalNetImageProcessor, images) -> torch.Tensor:
    return processor(images, return_tensors="pt")["pixel_values"]


def hf_pixels(image: Image.Image, **settings) -> torch.Tensor:
    oracle = BitImageProcessorPil(**{**HUB_SETTINGS, **settings})
    assert oracle.backend == "pil"
    return oracle(image, return_tensors="pt")["pixel_values"]


def timm_pixels(image: Image.Image, image_size: int) -> torch.Tensor:
    pretrained_cfg = timm.models.get_pretrained_cfg(TIMM_CONFIGS[image_size]).to_dict()
    transform = create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))
    return transform(image).unsqueeze(0)


def original_pixels(image: Image.Image, image_size: int) -> torch.Tensor:
    """microsoft/FocalNet's eval transform (data/build.py, TEST.CROP on, bicubic)."""
    transform = transforms.Compose(
        [
            transforms.Resize(int(256 / 224 * image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return transform(image).unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# The three pipelines against their oracles
@pytest.mark.parametrize("name", PHOTOS)
def test_hf_preset_matches_transformers_pil_backend(name: str) -> None:
    expected = hf_pixels(photo(name))
    assert expected.shape == (1, 3, 224, 224)
    assert_close(pixels(FocalNetImageProcessor.from_preset("hf"), photo_path(name)), expected, what=name)
    assert_close(pixels(FocalNetImageProcessor(), photo_path(name)), expected, what=f"{name} default")


@pytest.mark.parametrize("image_size", [224, 384])
@pytest.mark.parametrize("name", PHOTOS)
def test_timm_preset_matches_timm_eval_transform(name: str, image_size: int) -> None:
    processor = FocalNetImageProcessor.from_preset("timm", image_size=image_size)
    expected = timm_pixels(photo(name), image_size)
    assert expected.shape == (1, 3, image_size, image_size)
    assert_close(pixels(processor, photo_path(name)), expected, what=f"{name} at {image_size}")


def test_torchvision_crop_rounding_matters_on_chelsea() -> None:
    """Chelsea's timm crop starts at a half pixel: HF's floored offset would be one pixel off."""
    floored = FocalNetImageProcessor(crop_pct=0.9, crop_size=224, resample="bicubic", crop_rounding="floor")
    assert max_diff(pixels(floored, photo_path("chelsea")), timm_pixels(photo("chelsea"), 224)) > 0.5


@pytest.mark.parametrize("image_size", [224, 384])
@pytest.mark.parametrize("name", PHOTOS)
def test_original_preset_matches_torchvision_pipeline(name: str, image_size: int) -> None:
    processor = FocalNetImageProcessor.from_preset("original", image_size=image_size)
    expected = original_pixels(photo(name), image_size)
    assert_close(pixels(processor, photo_path(name)), expected, what=f"{name} at {image_size}")


def test_presets_differ_and_unknown_preset_is_refused() -> None:
    outputs = {name: pixels(FocalNetImageProcessor.from_preset(name), photo_path("chelsea")) for name in ("hf", "timm")}
    assert max_diff(outputs["hf"], outputs["timm"]) > 0.1
    assert FocalNetImageProcessor.from_preset("timm", 384).size == 384
    assert FocalNetImageProcessor.from_preset("original", 384).size == 438
    assert FocalNetImageProcessor(crop_size=384).size == 438  # the CLI's call keeps the 256/224 ratio
    with pytest.raises(ValueError, match="unknown pipeline"):
        FocalNetImageProcessor.from_preset("imagenet")


def test_crop_larger_than_image_pads_like_each_oracle() -> None:
    """No resize, crop 256 of a 210x321 photo: zeros outside, offsets as transformers resp. torchvision."""
    image = photo("rocket")
    hf_like = FocalNetImageProcessor(do_resize=False, crop_size=256)
    assert_close(pixels(hf_like, image), hf_pixels(image, do_resize=False, crop_size={"height": 256, "width": 256}))
    tv_like = FocalNetImageProcessor(do_resize=False, crop_size=(256, 255), crop_rounding="round")
    tv = transforms.Compose(
        [transforms.CenterCrop((256, 255)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    assert_close(pixels(tv_like, image), tv(image).unsqueeze(0))


# ------------------------------------------------------------------------------------------------
# preprocessor_config.json
def test_from_pretrained_reads_what_transformers_writes(tmp_path: Path) -> None:
    BitImageProcessor(**HUB_SETTINGS).save_pretrained(tmp_path)
    oracle = BitImageProcessorPil.from_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / CONFIG_NAME, str(tmp_path)):
        processor = FocalNetImageProcessor.from_pretrained(source)
        assert processor.to_dict() == FocalNetImageProcessor().to_dict()
        for name in PHOTOS:
            expected = oracle(photo(name), return_tensors="pt")["pixel_values"]
            assert_close(pixels(processor, photo_path(name)), expected, what=f"{name} from {source}")


def test_from_pretrained_honours_every_setting(tmp_path: Path) -> None:
    settings = dict(
        size={"height": 240, "width": 200},
        resample=3,
        crop_size={"height": 192, "width": 160},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
        rescale_factor=1 / 127.5,
    )
    BitImageProcessor(**{**HUB_SETTINGS, **settings}).save_pretrained(tmp_path)
    processor = FocalNetImageProcessor.from_pretrained(tmp_path)
    result = pixels(processor, photo_path("chelsea"))
    assert result.shape == (1, 3, 192, 160)
    assert_close(result, hf_pixels(photo("chelsea"), **settings))
    for switch in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        config = json.loads((tmp_path / CONFIG_NAME).read_text())
        (tmp_path / "off").mkdir(exist_ok=True)
        (tmp_path / "off" / CONFIG_NAME).write_text(json.dumps({**config, switch: False}))
        processor = FocalNetImageProcessor.from_pretrained(tmp_path / "off")
        expected = hf_pixels(photo("astronaut"), **settings, **{switch: False})
        assert_close(pixels(processor, photo_path("astronaut")), expected, what=f"{switch}=False")


def test_save_pretrained_is_read_back_by_transformers(tmp_path: Path) -> None:
    processor = FocalNetImageProcessor.from_preset("timm", image_size=384)
    path = processor.save_pretrained(tmp_path)
    assert path == tmp_path / CONFIG_NAME and sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME]
    oracle = BitImageProcessor.from_pretrained(tmp_path)
    assert oracle.size == {"shortest_edge": 384} and oracle.crop_size == {"height": 384, "width": 384}
    assert int(oracle.resample) == 3 and oracle.do_resize and oracle.do_center_crop and oracle.do_convert_rgb
    assert oracle.do_rescale and oracle.rescale_factor == 1 / 255 and oracle.do_normalize
    assert list(oracle.image_mean) == list(IMAGENET_MEAN) and list(oracle.image_std) == list(IMAGENET_STD)
    assert FocalNetImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()

    FocalNetImageProcessor().save_pretrained(tmp_path)  # replaces the file
    expected = BitImageProcessorPil.from_pretrained(tmp_path)(photo("rocket"), return_tensors="pt")["pixel_values"]
    assert_close(pixels(FocalNetImageProcessor(), photo_path("rocket")), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME]


def test_from_pretrained_ignores_unknown_keys(tmp_path: Path) -> None:
    config = {**HUB_SETTINGS, "do_pad": True, "processor_class": "X", "crop_pct": 0.5, "size": 300}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    processor = FocalNetImageProcessor.from_pretrained(tmp_path)
    assert processor.size == 300 and processor.crop_size == (224, 224) and processor.resample == "bilinear"


@pytest.mark.parametrize(
    "content",
    [
        '{"size": {"shortest_edge": 256}',
        "[1, 2, 3]",
        b"\xff\xfe\x00 not text",
        '{"size": {"longest_edge": 256}}',
        '{"resample": 1}',
        '{"crop_size": {"height": 224}}',
        '{"image_mean": [0.5, 0.5]}',
        '{"do_rescale": true, "rescale_factor": "x"}',
        '{"do_resize": "false"}',
    ],
)
def test_damaged_config_is_a_value_error_naming_the_file(tmp_path: Path, content: str | bytes) -> None:
    file = tmp_path / CONFIG_NAME
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=re.escape(CONFIG_NAME)):
        FocalNetImageProcessor.from_pretrained(tmp_path)


def test_missing_config_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(CONFIG_NAME)):
        FocalNetImageProcessor.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# Input types
def test_every_input_type_gives_the_pixels_of_the_file() -> None:
    processor = FocalNetImageProcessor()
    path = photo_path("rocket")
    expected = pixels(processor, str(path))
    array = np.array(photo("rocket"))
    chw = torch.from_numpy(array).permute(2, 0, 1)
    inputs = {
        "Path": path,
        "PIL": photo("rocket"),
        "numpy uint8 HWC": array,
        "numpy float32 HWC": array.astype(np.float32) / 255,
        "numpy float64 HWC": array / 255.0,
        "numpy float16 HWC": array.astype(np.float16) / 255,  # k / 255 is inexact: rounded back to k
        "numpy uint16 HWC": array.astype(np.uint16) * 257,
        "torch uint8 CHW": chw,
        "torch float CHW": chw.float() / 255,
        "torch float16 CHW": chw.half() / 255,
    }
    for kind, image in inputs.items():
        assert_close(pixels(processor, image), expected, atol=0.0, what=kind)
    batch = pixels(processor, list(inputs.values()))
    assert batch.shape == (len(inputs), 3, 224, 224) and batch.dtype == torch.float32
    assert_close(batch, expected.expand_as(batch), atol=0.0, what="mixed list")


def test_batch_of_different_photos_keeps_each_image() -> None:
    processor = FocalNetImageProcessor()
    batch = pixels(processor, [photo_path(name) for name in PHOTOS])
    assert batch.shape == (3, 3, 224, 224)
    for i, name in enumerate(PHOTOS):
        assert_close(batch[i : i + 1], pixels(processor, photo_path(name)), atol=0.0, what=name)
    without_crop = FocalNetImageProcessor(do_center_crop=False)
    with pytest.raises(ValueError, match="different sizes"):
        pixels(without_crop, [photo_path(name) for name in PHOTOS])


def test_greyscale_and_alpha_arrays_match_the_pil_modes() -> None:
    processor = FocalNetImageProcessor()
    grey = photo("chelsea").convert("L")
    grey_array = np.array(grey)
    expected = pixels(processor, grey)
    for image in (grey_array, grey_array[..., None], torch.from_numpy(grey_array), torch.from_numpy(grey_array)[None]):
        assert_close(pixels(processor, image), expected, atol=0.0, what=f"greyscale {tuple(image.shape)}")
    rgba = np.dstack([np.array(photo("chelsea")), np.linspace(0, 255, grey_array.size).reshape(grey_array.shape)])
    rgba = rgba.astype(np.uint8)
    assert_close(pixels(processor, rgba), pixels(processor, Image.fromarray(rgba)), atol=0.0, what="RGBA array")


# ------------------------------------------------------------------------------------------------
# Odd image modes, written as files from the photographs
def alpha_ramp(size: tuple[int, int]) -> Image.Image:
    width, height = size
    ramp = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
    return Image.fromarray(ramp)


def make_mode_file(mode: str, folder: Path) -> Path:
    """A file of `mode` made from chelsea.jpg; returns its path."""
    rgb = photo("chelsea")
    if mode == "L":
        image, suffix = rgb.convert("L"), "png"
    elif mode == "LA":
        image, suffix = Image.merge("LA", [rgb.convert("L"), alpha_ramp(rgb.size)]), "png"
    elif mode == "RGBA":
        image, suffix = Image.merge("RGBA", [*rgb.split(), alpha_ramp(rgb.size)]), "png"
    elif mode in ("P", "P+transparency"):
        image, suffix = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "png"
    elif mode == "CMYK":
        image, suffix = rgb.convert("CMYK"), "jpg"
    elif mode == "1":
        image, suffix = rgb.convert("1"), "png"
    else:
        raise AssertionError(mode)
    path = folder / f"chelsea_{mode}.{suffix}"
    if mode == "P+transparency":
        most_common = int(np.bincount(np.array(image).ravel()).argmax())
        image.save(path, transparency=most_common)
    else:
        image.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P+transparency", "CMYK", "1"])
def test_odd_modes_match_transformers(tmp_path: Path, mode: str) -> None:
    path = make_mode_file(mode, tmp_path)
    with Image.open(path) as opened:
        opened.load()
        assert opened.mode == mode.split("+")[0]
        assert (opened.info.get("transparency") is not None) == mode.endswith("transparency")
        expected = hf_pixels(opened)
    result = pixels(FocalNetImageProcessor(), path)
    assert result.shape == (1, 3, 224, 224) and torch.isfinite(result).all()
    assert_close(result, expected, what=mode)
    if "A" in mode or "transparency" in mode:  # composited on white, not the colours under the alpha
        with Image.open(path) as opened:
            dropped_alpha = Image.fromarray(np.array(opened.convert("RGB")))  # no transparency info left
        assert max_diff(pixels(FocalNetImageProcessor(), dropped_alpha), result) > 0.5


def sixteen_bit_photo() -> np.ndarray:
    """Chelsea's luminance as a real 16-bit image (0..65535)."""
    luminance = np.array(photo("chelsea"), dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.round(luminance / 255 * 65535).astype(np.uint16)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = sixteen_bit_photo()
    path = tmp_path / "chelsea16.png"
    Image.fromarray(values).save(path)
    eight_bit = Image.fromarray(((values.astype(np.int64) + 128) // 257).astype(np.uint8))  # round(v / 257)
    expected = pixels(FocalNetImageProcessor(), eight_bit)
    with Image.open(path) as opened:
        opened.load()
        assert opened.mode == "I;16"
        as_int32 = opened.convert("I")
        clipped = hf_pixels(opened)  # Pillow's own conversion saturates at 255
        result = pixels(FocalNetImageProcessor(), opened)
    assert_close(pixels(FocalNetImageProcessor(), path), expected, atol=0.0, what="16-bit file")
    assert_close(result, expected, atol=0.0, what="16-bit PIL image")
    assert_close(pixels(FocalNetImageProcessor(), as_int32), expected, atol=0.0, what="mode I")
    assert_close(pixels(FocalNetImageProcessor(), values), expected, atol=0.0, what="uint16 array")
    assert max_diff(clipped, expected) > 1.0
    assert_close(hf_pixels(eight_bit), expected, what="transformers on the 8-bit image")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = photo("chelsea")
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    with Image.open(path) as opened:
        opened.load()
        assert opened.size == (upright.height, upright.width)
        stored = opened.copy()
    displayed = stored.transpose(Image.Transpose.ROTATE_270)
    displayed.info.pop("exif", None)
    processor = FocalNetImageProcessor()
    result = pixels(processor, path)
    assert_close(result, pixels(processor, displayed), atol=0.0, what="rotated file")
    assert_close(pixels(processor, stored), result, atol=0.0, what="rotated PIL image")
    assert load_image(path).size == upright.size
    assert (result - pixels(processor, upright)).abs().mean() < 0.05  # upright again (JPEG noise only)


# ------------------------------------------------------------------------------------------------
# Errors
def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"these are not pixels")
    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    photo("chelsea").save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    for broken in (not_an_image, truncated):
        with pytest.raises(ValueError, match=re.escape(broken.name)):
            pixels(FocalNetImageProcessor(), broken)
    with pytest.raises(FileNotFoundError, match=re.escape("missing.png")):
        pixels(FocalNetImageProcessor(), tmp_path / "missing.png")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((32, 32, 2), np.uint8),
        np.zeros((1, 32, 32, 3), np.uint8),
        np.zeros((0, 32, 3), np.uint8),
        np.zeros(32, np.uint8),
        torch.zeros(2, 32, 32, dtype=torch.uint8),
        torch.zeros(1, 3, 32, 32),
        torch.zeros(32, 32, 3),
    ],
    ids=lambda image: f"{type(image).__module__.split('.')[0]}{tuple(image.shape)}",
)
def test_wrong_array_shapes_are_value_errors_naming_the_shape(image) -> None:
    with pytest.raises(ValueError, match=re.escape(str(tuple(image.shape)))):
        pixels(FocalNetImageProcessor(), image)


def test_wrong_values_and_arguments() -> None:
    processor = FocalNetImageProcessor()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixels(processor, np.full((32, 32, 3), 1.5, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixels(processor, torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="int64"):
        pixels(processor, np.zeros((32, 32, 3), np.int64))
    with pytest.raises(TypeError, match="int"):
        pixels(processor, 42)
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photo_path("chelsea"), return_tensors="np")
    with pytest.raises(ValueError, match="no images"):
        processor([])
    for bad in (dict(resample="lanczos"), dict(resample=1), dict(crop_rounding="ceil"), dict(crop_size=0)):
        with pytest.raises(ValueError):
            FocalNetImageProcessor(**bad)
    with pytest.raises(ValueError, match="not both"):
        FocalNetImageProcessor(size=256, crop_pct=0.9)
    assert FocalNetImageProcessor(crop_size=(192, 224)).size == 256  # the longer crop side sets the resize


def test_missing_vision_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"focalnet\[vision\]"):
        pixels(FocalNetImageProcessor(), photo_path("chelsea"))
