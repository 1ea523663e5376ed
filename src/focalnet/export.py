"""ONNX export of the FocalNet models and UperNet, and running the files with onnxruntime.

    from focalnet.export import check_onnx, export_onnx
    export_onnx(model, "model.onnx")      # dynamic batch, height and width
    check_onnx(model, "model.onnx")       # max |onnxruntime - PyTorch| at a few batch and image sizes

The graph comes from `torch.export` (torch.onnx's dynamo exporter), which keeps batch, height and
width symbolic through the model's own arithmetic on them: the zero-padding of every stride to a
multiple, the crop of the SimMIM reconstruction, UperNet's resizes. One file therefore runs at any
size, multiples of 32 or not. The TorchScript exporter is not used: it records that arithmetic as
constants of the example's size, so other sizes come out wrong. Under `torch.export` the model
takes its plain path, not the fused oneDNN one (`focalnet.fused`), so the file has only standard ops.

The file's metadata carry what `focalnet predict --onnx` needs: the model class, its config (the
labels included) and the image preprocessing (the `METADATA_*` keys). Needs the `export` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._io import atomic_path
from .checkpoints import build_from_resolved, resolve
from .configuration import FocalNetConfig
from .image_processing import FocalNetImageProcessor
from .modeling import (
    FocalNetBackbone,
    FocalNetForImageClassification,
    FocalNetForMaskedImageModeling,
    FocalNetModel,
    FocalNetPreTrainedModel,
    class_for_weights,
)
from .outputs import ModelOutput
from .predict import Predictor, processor_for
from .segmentation import UperNetForSemanticSegmentation

INPUT_NAME = "pixel_values"
METADATA_CLASS = "focalnet.model_class"
METADATA_CONFIG = "focalnet.config"
METADATA_PREPROCESSOR = "focalnet.preprocessor_config"
METADATA_VERSION = "focalnet.version"
MIN_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes

# The outputs each class exports, in order; a tuple field (the backbone's maps) becomes name_0, name_1, ...
OUTPUT_FIELDS: dict[type[nn.Module], tuple[str, ...]] = {
    FocalNetForImageClassification: ("logits",),
    FocalNetModel: ("last_hidden_state", "pooler_output"),
    FocalNetBackbone: ("feature_maps",),
    FocalNetForMaskedImageModeling: ("reconstruction",),
    UperNetForSemanticSegmentation: ("logits",),
}

# A single ONNX file is one protobuf, which cannot exceed 2 GiB; keep a margin for the graph.
_MAX_WEIGHT_BYTES = 2**31 - 2**26


class ExportError(ValueError):
    """A model that cannot be exported, or a file that does not reproduce it; the message says why."""


def _require(module: str, purpose: str) -> ModuleType:
    """An optional dependency of the `export` extra, or an ImportError that names the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs {module}: pip install 'focalnet[export]'") from None


# ------------------------------------------------------------------------------------------------
# what a file computes
def output_fields(model: nn.Module) -> tuple[str, ...]:
    """The output fields `model` exports; an ExportError for a class that has no ONNX form here."""
    for cls in type(model).__mro__:
        if cls in OUTPUT_FIELDS:
            return OUTPUT_FIELDS[cls]
    supported = ", ".join(cls.__name__ for cls in OUTPUT_FIELDS)
    raise ExportError(f"cannot export {type(model).__name__} to ONNX: export_onnx takes {supported}")


def named_outputs(output: ModelOutput, fields: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
    """The `fields` of a model output as (name, tensor) pairs, a tuple spelled out as name_0, name_1, ..."""
    named = []
    for field in fields:
        value = getattr(output, field)
        if isinstance(value, torch.Tensor):
            named.append((field, value))
        elif value is not None:
            named += [(f"{field}_{i}", tensor) for i, tensor in enumerate(value)]
    return named


def _exported_outputs(model: nn.Module, pixel_values: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The exported outputs of `model` on `pixel_values`, named as in the file."""
    output = model(pixel_values, output_hidden_states=False, return_dict=True)
    return named_outputs(output, output_fields(model))


class _OnnxGraph(nn.Module):
    """What the file computes: the model's exported outputs, as a flat tuple of tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor for _, tensor in _exported_outputs(self.model, pixel_values))


# ------------------------------------------------------------------------------------------------
# ops whose exported form would keep the example's size
def _window_weights(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) matrix whose row i averages adaptive window i, [floor(i*size/bins), ceil((i+1)*size/bins))."""
    window = torch.arange(bins, device=like.device)[:, None]
    position = torch.arange(size, device=like.device)[None, :]
    start, end = window * size // bins, ((window + 1) * size + bins - 1) // bins
    inside = ((position >= start) & (position < end)).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int | Sequence[int | None]) -> torch.Tensor:
    """`F.adaptive_avg_pool2d` as two products with averaging matrices: no branch on the input's size.

    torch's decomposition of adaptive pooling (which torch.onnx uses; ONNX has no such op) picks
    its formula by the divisibility of the input's size, so the exported file would be right only
    at sizes that divide as the example's did (UperNet's 2x2 pooling: even or odd maps).
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = x.shape[-2:]
    rows = _window_weights(height, height if out_h is None else out_h, x)
    columns = _window_weights(width, width if out_w is None else out_w, x)
    return rows @ x @ columns.mT


class _SizeGeneralOps(TorchFunctionMode):
    """While exporting, `adaptive_avg_pool2d` above runs where the model calls torch's (UperNet's pooling)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.adaptive_avg_pool2d:
            return adaptive_avg_pool2d(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------------
# export
def _check_exportable(model: nn.Module) -> None:
    """Refuse, with the reason, other classes and models whose layers or weights torch.onnx or one file cannot hold."""
    output_fields(model)
    quantized = [name for name, module in model.named_modules() if ".quantized." in type(module).__module__]
    if quantized:
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX: it has int8-quantised layers ({quantized[0]}, ...), "
            "which torch.onnx cannot translate; export the float model, then quantise the file with "
            "onnxruntime.quantization.quantize_dynamic"
        )
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    if dtypes != ["float32"]:
        raise ExportError(f"export_onnx takes float32 models, this one has {', '.join(dtypes)} weights: model.float()")
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if size > _MAX_WEIGHT_BYTES:
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX: its {size / 2**30:.1f} GiB of weights exceed what "
            "one ONNX file holds (2 GiB); external-data files are not supported here"
        )


def _check_opset(opset: int | None) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset must be from {MIN_OPSET} (torch.onnx's oldest) to {newest} (onnx's newest), got {opset}"
        )


def _base_config(model: nn.Module) -> FocalNetConfig:
    """The FocalNet config: the model's, or its backbone's."""
    config = model.config
    return getattr(config, "backbone_config", config)


def _image_size(model: nn.Module, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """(height, width) of the example input: `image_size`, or the config's."""
    if image_size is None:
        return _base_config(model).image_size_2d
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 2 for v in size):
        raise ValueError(f"image_size must be an int >= 2 or a (height, width) pair of them, got {image_size!r}")
    return size


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, fixed BatchNorm statistics) inside the block, the model's own after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _metadata(model: nn.Module, processor: Any | None) -> dict[str, str]:
    from . import __version__

    metadata = {
        METADATA_CLASS: type(model).__name__,
        METADATA_CONFIG: json.dumps(model.config.to_dict(), sort_keys=True),
        METADATA_VERSION: __version__,
    }
    if processor is not None:
        metadata[METADATA_PREPROCESSOR] = json.dumps(processor.to_dict(), sort_keys=True)
    return metadata


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    dynamic: bool = True,
    opset: int | None = None,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    processor: Any | None = None,
) -> Path:
    """Write `model` (float32, in eval mode) as an ONNX file with one input, `pixel_values`; return its path.

    Outputs are named after the model's output fields: `logits`, `last_hidden_state` and
    `pooler_output`, `feature_maps_0..N`, `reconstruction`. With `dynamic` batch, height and width
    are free; otherwise the file takes only `batch_size` x C x `image_size` (default: the config's
    image size, which is also the example traced). `opset`: torch.onnx's default when None.
    `processor` (a `FocalNetImageProcessor` or `SegmentationPreprocessing`) is stored for
    `predict --onnx`. The file passes `onnx.checker` (full check) before it appears, whole.
    """
    onnx = _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    _check_exportable(model)
    _check_opset(opset)
    height, width = _image_size(model, image_size)
    # torch.export takes a dimension of size 1 for a constant: a dynamic batch needs an example of 2.
    batch = max(batch_size, 2) if dynamic else batch_size
    example = torch.randn(batch, _base_config(model).num_channels, height, width, device=model.device)
    with _evaluating(model), torch.no_grad():
        names = [name for name, _ in _exported_outputs(model, example)]
        program = _dynamo_export(_OnnxGraph(model).eval(), example, names, dynamic, opset)
    program.model.metadata_props.update(_metadata(model, processor))
    with atomic_path(path) as tmp:
        program.save(tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
    return Path(path)


def _dynamo_export(
    graph: _OnnxGraph, example: torch.Tensor, names: list[str], dynamic: bool, opset: int | None
) -> torch.onnx.ONNXProgram:
    """torch.onnx's dynamo exporter on `graph`; an ExportError with torch's reason when it fails."""
    shapes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if dynamic else None  # free, named dimensions
    try:
        with _SizeGeneralOps():
            return torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=shapes,
                opset_version=opset,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as error:
        raise ExportError(
            f"torch.onnx could not export {type(graph.model).__name__}: {_first_line(error.__cause__ or error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    """An exception as one line of plain text (torch.onnx colours its messages)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def load_exportable(source: str | os.PathLike) -> tuple[FocalNetPreTrainedModel, FocalNetImageProcessor]:
    """The FocalNet model at `source` (anything `from_pretrained` takes) in the class its config names
    (else by its heads: SimMIM decoder, classifier, or the bare encoder), with its preprocessing."""
    resolved = resolve(source, {})
    model = build_from_resolved(_checkpoint_class(resolved.config, resolved.state), resolved)
    return model, processor_for(source, model.config.image_size_2d[0])


def _checkpoint_class(config: FocalNetConfig, state: dict[str, torch.Tensor]) -> type[FocalNetPreTrainedModel]:
    exportable = {cls.__name__: cls for cls in OUTPUT_FIELDS if issubclass(cls, FocalNetPreTrainedModel)}
    return class_for_weights(config, state.keys(), exportable) or FocalNetModel


# ------------------------------------------------------------------------------------------------
# running a file
def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on the file at `path`; `threads` intra-op threads (default: onnxruntime's)."""
    onnxruntime = _require("onnxruntime", "running ONNX files")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, names: list[str], pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The outputs `names` of the file on `pixel_values`; onnxruntime's failures as an ExportError."""
    state = _require("onnxruntime.capi.onnxruntime_pybind11_state", "running ONNX files")
    try:
        arrays = session.run(names, {INPUT_NAME: pixel_values.cpu().numpy()})
    except (state.Fail, state.InvalidArgument, state.RuntimeException) as error:
        shape = "x".join(map(str, pixel_values.shape))
        raise ExportError(f"onnxruntime failed on a {shape} input: {_first_line(error)}") from error
    return [torch.from_numpy(array) for array in arrays]


def read_metadata(session: Any) -> dict[str, str]:
    """The file's metadata: `METADATA_CLASS`, `METADATA_CONFIG`, `METADATA_PREPROCESSOR`, ..."""
    return dict(session.get_modelmeta().custom_metadata_map)


def input_shape(session: Any) -> list[int | None]:
    """The shape of the file's input, None where it is dynamic."""
    return [dim if isinstance(dim, int) else None for dim in session.get_inputs()[0].shape]


def default_check_shapes(session: Any, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(batch, height, width) to compare at: a static file's own shape; for a dynamic one, one image of
    `image_size` and three of a non-square size that is not a multiple of 32 (17 px taller, 31 narrower)."""
    batch, _, height, width = input_shape(session)
    if None not in (batch, height, width):
        return [(batch, height, width)]
    other = (image_size[0] + 17, max(image_size[1] - 31, 9))
    return [(1, *image_size), (3, *other)]


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    shapes: Sequence[tuple[int, int, int]] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """The largest |onnxruntime - PyTorch| over every output, on random inputs of each (batch, height,
    width) in `shapes` (default: `default_check_shapes`); an ExportError when it exceeds `atol`."""
    session = onnx_session(path)
    shapes = shapes or default_check_shapes(session, _image_size(model, None))
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch, height, width in shapes:
        pixels = torch.randn(batch, _base_config(model).num_channels, height, width, generator=generator)
        with _evaluating(model), torch.inference_mode():
            expected = _exported_outputs(model, pixels.to(model.device))
        got = run_session(session, [name for name, _ in expected], pixels)
        for (name, tensor), ours in zip(expected, got, strict=True):
            if ours.shape != tensor.shape:
                raise ExportError(f"{path}: {name} has shape {tuple(ours.shape)}, PyTorch's {tuple(tensor.shape)}")
            worst = max(worst, (ours - tensor.float().cpu()).abs().max().item())
    if worst > atol:
        raise ExportError(f"{path} differs from the PyTorch model by up to {worst:.3g} (allowed: {atol:g})")
    return worst


class OnnxPredictor(Predictor):
    """`Predictor` on an exported image classifier, run by onnxruntime with the preprocessing stored
    in the file (else HF's at the config's image size): the same images in, the same results out."""

    def __init__(self, session: Any, processor: FocalNetImageProcessor, config: FocalNetConfig) -> None:
        # No PyTorch model: `logits` runs the session.
        self.session = session
        self.processor = processor
        self.config = config
        self.id2label = config.id2label

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> OnnxPredictor:
        session = onnx_session(path)
        metadata = read_metadata(session)
        stored = metadata.get(METADATA_CLASS)
        if stored != FocalNetForImageClassification.__name__:
            raise ExportError(
                f"{path} holds {stored or 'no focalnet model'}; predict --onnx takes files of "
                "FocalNetForImageClassification written by export_onnx"
            )
        config = FocalNetConfig.from_dict(json.loads(metadata[METADATA_CONFIG]))
        if METADATA_PREPROCESSOR in metadata:
            processor = FocalNetImageProcessor.from_dict(json.loads(metadata[METADATA_PREPROCESSOR]))
        else:
            processor = FocalNetImageProcessor.from_preset("hf", image_size=config.image_size_2d[0])
        return cls(session, processor, config)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits of the batch; a static file runs it in slices of its batch size, the last one zero-padded."""
        fixed, _, height, width = input_shape(self.session)
        given = tuple(pixel_values.shape[2:])
        if (height or given[0], width or given[1]) != given:
            raise ExportError(
                f"this file takes {height}x{width} images (a static export), the preprocessing gives "
                f"{given[0]}x{given[1]}: export with that --image-size, or without --static"
            )
        if fixed is None:
            return self._run(pixel_values)
        slices = []
        for chunk in pixel_values.split(fixed):
            padding = chunk.new_zeros(fixed - len(chunk), *chunk.shape[1:])
            slices.append(self._run(torch.cat([chunk, padding]))[: len(chunk)])
        return torch.cat(slices)

    def _run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        (logits,) = run_session(self.session, ["logits"], pixel_values)
        return logits
