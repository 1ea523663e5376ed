"""ONNX export: every model class through onnxruntime at several batch and image sizes from one
file, static files, `focalnet export` and `predict --onnx`, and the errors that name their reason."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import focalnet
from conftest import randomize_
from focalnet.cli import main
from focalnet.export import (
    METADATA_CLASS,
    METADATA_CONFIG,
    METADATA_PREPROCESSOR,
    ExportError,
    adaptive_avg_pool2d,
    check_onnx,
    export_onnx,
)
from focalnet.quantization import quantize_dynamic_int8

pytestmark = pytest.mark.numerics

IMAGES = Path(__file__).parent / "data" / "images"
ATOL = 1e-4
# (batch, height, width): square, non-square, and sides that are not multiples of the total stride (4 or 8 here)
SIZES = [(1, 64, 64), (2, 81, 47), (3, 33, 100)]


def tiny_config(stages: int, **overrides) -> focalnet.FocalNetConfig:
    """A FocalNet of `stages` one-block stages; fewer stages keep torch.export's symbolic work short."""
    kwargs = dict(embed_dim=16, depths=[1] * stages, focal_levels=[2] * stages, focal_windows=[3] * stages)
    return focalnet.FocalNetConfig(**kwargs, image_size=64, drop_path_rate=0.0, **overrides)


def tiny_upernet() -> focalnet.UperNetForSemanticSegmentation:
    """UperNet with pool scales 2 and 3: torch's own adaptive pooling would fix the example's parity."""
    backbone = tiny_config(1, out_features=["stem", "stage1"], use_backbone_layernorm=True)
    config = focalnet.UperNetConfig(
        backbone_config=backbone, hidden_size=16, pool_scales=[1, 2, 3], use_auxiliary_head=False, num_labels=4
    )
    return focalnet.UperNetForSemanticSegmentation(config)


def tiny_classifier(tmp_path: Path) -> Path:
    """A saved classifier with labels and its own preprocessing (96 px, bicubic)."""
    labels = ["cat", "cup", "rocket", "dog", "kettle", "tree"]
    config = tiny_config(1, id2label=dict(enumerate(labels)))
    directory = tmp_path / "classifier"
    randomize_(focalnet.FocalNetForImageClassification(config)).save_pretrained(directory)
    focalnet.FocalNetImageProcessor(size=110, crop_size=96, resample="bicubic").save_pretrained(directory)
    return directory


# model class -> (a small model, its output names in the file, the same outputs from PyTorch's output)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], Callable]] = {
    "model": (
        lambda: focalnet.FocalNetModel(tiny_config(2)),  # two stages: the downsample pads odd grids too
        ["last_hidden_state", "pooler_output"],
        lambda out: [out.last_hidden_state, out.pooler_output],
    ),
    "backbone": (
        lambda: focalnet.FocalNetBackbone(tiny_config(1, out_features=["stem", "stage1"], use_backbone_layernorm=True)),
        ["feature_maps_0", "feature_maps_1"],
        lambda out: list(out.feature_maps),
    ),
    "masked-image-modeling": (
        lambda: focalnet.FocalNetForMaskedImageModeling(tiny_config(1, encoder_stride=4)),
        ["reconstruction"],
        lambda out: [out.reconstruction],
    ),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """Each model class exported once (dynamic): the API for three, `focalnet export` for the others."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("export")
    files = {}
    for name, (build, _, _) in CASES.items():
        model = randomize_(build()).eval()
        files[name] = (model, export_onnx(model, directory / f"{name}.onnx"))
    upernet = randomize_(tiny_upernet()).eval()
    upernet.save_pretrained(directory / "upernet")
    assert main(["export", str(directory / "upernet"), str(directory / "upernet.onnx")]) == 0
    files["semantic-segmentation"] = (upernet, directory / "upernet.onnx")
    classifier_dir = tiny_classifier(directory)
    assert main(["export", str(classifier_dir), str(directory / "classifier.onnx")]) == 0
    classifier = focalnet.FocalNetForImageClassification.from_pretrained(classifier_dir)
    files["classification"] = (classifier, directory / "classifier.onnx")
    files["classifier-dir"] = (classifier, classifier_dir)
    return files


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _expected_outputs(name: str, model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(pixels)
    if name in CASES:
        return CASES[name][2](out)
    return [out.logits]


@pytest.mark.parametrize("name", [*CASES, "classification", "semantic-segmentation"])
def test_one_file_reproduces_the_model_at_every_batch_and_size(exported, name: str) -> None:
    model, path = exported[name]
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert {node.domain for node in graph.graph.node} == {""}, "standard ONNX operators only (no oneDNN kernels)"
    session = _session(path)
    (pixel_values,) = session.get_inputs()
    assert pixel_values.name == "pixel_values" and pixel_values.shape == ["batch", 3, "height", "width"]
    names = [output.name for output in session.get_outputs()]
    assert names == (CASES[name][1] if name in CASES else ["logits"])
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in SIZES:
        pixels = torch.randn(batch, 3, height, width, generator=generator)
        got = session.run(names, {"pixel_values": pixels.numpy()})
        for output, expected, array in zip(names, _expected_outputs(name, model, pixels), got, strict=True):
            assert array.shape == tuple(expected.shape), f"{output} at {batch}x{height}x{width}"
            diff = (torch.from_numpy(array) - expected).abs().max().item()
            assert diff <= ATOL, f"{output} at {batch}x{height}x{width}: max abs diff {diff:.3g}"
    assert check_onnx(model, path, SIZES) <= ATOL


def test_check_onnx_catches_a_file_of_other_weights(exported) -> None:
    model, path = exported["model"]
    other = randomize_(CASES["model"][0](), seed=1).eval()
    assert check_onnx(model, path) <= ATOL  # default shapes: the config's size and a non-square odd one
    with pytest.raises(ExportError, match="differs from the PyTorch model by up to"):
        check_onnx(other, path)


def test_the_file_carries_class_config_and_preprocessing(exported) -> None:
    model, path = exported["classification"]
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert metadata[METADATA_CLASS] == "FocalNetForImageClassification"
    config = focalnet.FocalNetConfig.from_dict(json.loads(metadata[METADATA_CONFIG]))
    assert (
        config.id2label == model.config.id2label
        and config.id2label[2] == "rocket"
        and config.depths == model.config.depths
    )
    processor = json.loads(metadata[METADATA_PREPROCESSOR])
    assert processor["crop_size"] == {"height": 96, "width": 96} and processor["resample"] == 3
    upernet_metadata = {
        prop.key: prop.value for prop in onnx.load(str(exported["semantic-segmentation"][1])).metadata_props
    }
    assert upernet_metadata[METADATA_CLASS] == "UperNetForSemanticSegmentation"
    assert json.loads(upernet_metadata[METADATA_PREPROCESSOR])["processor_type"] == "focalnet-segmentation"


def test_adaptive_pooling_equals_torch_at_every_size() -> None:
    for size in [1, 2, 3, 5, 8, 13]:
        x = torch.randn(2, 4, size, size + 3)
        for output_size in [1, 2, 3, 6, (2, None)]:
            expected = nn.functional.adaptive_avg_pool2d(x, output_size)
            assert torch.allclose(adaptive_avg_pool2d(x, output_size), expected, atol=1e-6), (size, output_size)


# ------------------------------------------------------------------------------------------------
# static files
def test_static_export_fixes_the_example_shape(tmp_path) -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(1))).eval()
    path = export_onnx(model, tmp_path / "static.onnx", dynamic=False, image_size=(48, 40), batch_size=2)
    session = _session(path)
    assert session.get_inputs()[0].shape == [2, 3, 48, 40]
    assert session.get_outputs()[0].shape == [2, model.config.num_labels]
    assert check_onnx(model, path) <= ATOL  # at the file's own shape, the only one it takes
    for batch, height, width in [(1, 48, 40), (2, 64, 64)]:
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match="invalid dimensions"):
            session.run(None, {"pixel_values": torch.randn(batch, 3, height, width).numpy()})


# ------------------------------------------------------------------------------------------------
# the command line
def test_cli_export_prints_the_file_and_the_difference(exported, tmp_path, capsys) -> None:
    _, directory = exported["classifier-dir"]
    path = tmp_path / "static.onnx"
    assert main(["export", str(directory), str(path), "--static", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {path}: FocalNetForImageClassification, input pixel_values 1x3x64x64" in out
    difference = float(re.search(r"max abs difference (\S+)", out).group(1))
    assert difference <= ATOL
    assert _session(path).get_inputs()[0].shape == [1, 3, 64, 64]
    # the directory's preprocessing crops 96 px, which this file does not take
    assert main(["predict", str(IMAGES), "--onnx", str(path)]) == 2
    assert "takes 64x64 images (a static export), the preprocessing gives 96x96" in capsys.readouterr().err


def test_predict_onnx_equals_predict(exported, capsys) -> None:
    _, directory = exported["classifier-dir"]
    _, path = exported["classification"]
    reports = []
    for source in (["--model", str(directory)], ["--onnx", str(path)]):
        assert main(["predict", str(IMAGES), *source, "--json", "--top-k", "5", "--batch-size", "2"]) == 0
        reports.append(json.loads(capsys.readouterr().out)["predictions"])
    torch_report, onnx_report = reports
    assert len(onnx_report) == len(list(IMAGES.glob("*.jpg"))) == len(torch_report)
    for ours, theirs in zip(onnx_report, torch_report, strict=True):
        assert ours["path"] == theirs["path"]
        assert [g["label"] for g in ours["top_k"]] == [g["label"] for g in theirs["top_k"]]
        assert [g["score"] for g in ours["top_k"]] == pytest.approx([g["score"] for g in theirs["top_k"]], abs=1e-5)
    image = str(next(IMAGES.glob("*.jpg")))
    assert main(["predict", image, "--onnx", str(path), "--top-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 6
    assert lines[1].split()[-1] == torch_report[[r["path"] for r in torch_report].index(image)]["top_k"][0]["label"]


def test_predict_onnx_takes_only_classifiers(exported, capsys) -> None:
    _, path = exported["backbone"]
    assert main(["predict", str(IMAGES), "--onnx", str(path)]) == 2
    assert (
        "holds FocalNetBackbone; predict --onnx takes files of FocalNetForImageClassification"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------------
# errors
def test_unsupported_models_name_the_reason(tmp_path) -> None:
    classifier = focalnet.FocalNetForImageClassification(tiny_config(1)).eval()
    cases = [
        (nn.Linear(2, 2), "cannot export Linear to ONNX: export_onnx takes FocalNetForImageClassification"),
        (quantize_dynamic_int8(classifier), "int8-quantised layers"),
        (focalnet.FocalNetForImageClassification(tiny_config(1)).to(torch.bfloat16), "float32 models.*bfloat16"),
    ]
    for model, reason in cases:
        with pytest.raises(ExportError, match=reason):
            export_onnx(model, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="opset must be from 18"):
        export_onnx(classifier, tmp_path / "model.onnx", opset=12)
    with pytest.raises(ValueError, match="image_size must be"):
        export_onnx(classifier, tmp_path / "model.onnx", image_size=(64, 0))
    assert not list(tmp_path.iterdir()), "no file may be left behind"


def test_a_failed_export_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")

    def failing_check(*args, **kwargs) -> None:
        raise onnx.checker.ValidationError("broken graph")

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    model = focalnet.FocalNetForImageClassification(tiny_config(1)).eval()
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(model, path, dynamic=False)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_missing_onnx_names_the_extra(tmp_path, monkeypatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import onnx` raise ImportError
    model = focalnet.FocalNetForImageClassification(tiny_config(1))
    with pytest.raises(ImportError, match=re.escape("pip install 'focalnet[export]'")):
        export_onnx(model, tmp_path / "model.onnx")
