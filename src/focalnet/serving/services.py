"""The model behind an endpoint, one class per task: how an uploaded image is prepared for it, how
a batch of prepared images runs, and how each image's answer is written (the JSON of transformers'
pipelines) or drawn (the PNG of `focalnet visualize` / `predict`).

`prepare` runs in the server's thread pool, `forward` and `visualize` on its one model thread,
`answer` on the event loop (cheap). An image's answer depends on the image alone: batches only
hold images of one `Prepared.key` (one input shape), so no image is padded for another's sake.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import __version__
from ..image_processing import FocalNetImageProcessor
from ..modeling import FocalNetForImageClassification, FocalNetForMaskedImageModeling
from ..predict import Predictor, class_scores, is_detector_source, processor_for, top_classes
from .options import RequestParams, ServeOptions, ServingError

if TYPE_CHECKING:
    from PIL import Image

    from ..segmentation.inference import SegmentationPreprocessing

DEFAULT_MASK_RATIO = 0.6


@dataclass(eq=False)
class Prepared:
    """One uploaded image, ready for its model."""

    image: Image.Image
    """The upright RGB original (answers are in its pixels)."""
    inputs: torch.Tensor
    """What the model takes for this image (without a batch dimension)."""
    key: Hashable
    """Images of one key may share a batch."""
    mask: torch.Tensor | None = None
    """Masked image modeling: the hidden patches (True) of this image."""


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    """An image as the base64 PNG that the Hugging Face Inference API sends masks in."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def binary_mask_base64(mask: torch.Tensor) -> str:
    """A (H, W) bool mask as a black-and-white (0/255) base64 PNG."""
    from PIL import Image

    return png_base64(Image.fromarray((mask.to(torch.uint8) * 255).numpy(), mode="L"))


def _processor_fields(processor: FocalNetImageProcessor) -> dict[str, Any]:
    """`/model`'s input size (the crop, else the resize) and preprocessing of a FocalNet processor."""
    size = processor.crop_size if processor.do_center_crop else processor.size
    return {
        "input_size": list(size) if isinstance(size, (tuple, list)) else [size, size],
        "preprocessing": processor.to_dict(),
    }


def _autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast for models whose weights stay fp32 (detectors, segmenters); a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


class Service:
    """The interface; one subclass per task."""

    task: ClassVar[str]

    def __init__(self, model: nn.Module | None, options: ServeOptions) -> None:
        self.model = model
        self.options = options
        self.device = torch.device(options.device)
        self.dtype = torch.bfloat16 if options.dtype == "bfloat16" else torch.float32

    @property
    def labels(self) -> list[str]:
        return []

    def prepare(self, image: Image.Image, params: RequestParams) -> Prepared:
        raise NotImplementedError

    def forward(self, batch: list[Prepared]) -> list[Any]:
        """The model on a batch of one key; one output per image."""
        raise NotImplementedError

    def answer(self, output: Any, prepared: Prepared, params: RequestParams) -> Any:
        raise NotImplementedError

    def visualize(self, prepared: Prepared, params: RequestParams) -> bytes:
        """A PNG of what the model makes of the image."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What `GET /model` shows."""
        model = self.model
        return {
            "task": self.task,
            "model_class": type(model).__name__ if model is not None else None,
            "labels": self.labels,
            "num_labels": len(self.labels),
            "dtype": self.options.dtype,
            "device": str(self.device),
            "cpu_threads": torch.get_num_threads(),
            "library_version": __version__,
        }


# ------------------------------------------------------------------------------------------------
class ClassificationService(Service):
    """An image classifier (PyTorch, or an ONNX file through `OnnxPredictor`)."""

    task = "image-classification"

    def __init__(self, predictor: Predictor, options: ServeOptions) -> None:
        super().__init__(getattr(predictor, "model", None), options)
        self.predictor = predictor

    @property
    def labels(self) -> list[str]:
        id2label = self.predictor.id2label
        return [id2label.get(i, str(i)) for i in range(len(id2label))]

    def prepare(self, image: Image.Image, params: RequestParams) -> Prepared:
        inputs = self.predictor.processor.transform(image)
        return Prepared(image, inputs, tuple(inputs.shape))

    def forward(self, batch: list[Prepared]) -> list[torch.Tensor]:
        logits = self.predictor.logits(torch.stack([item.inputs for item in batch]))
        return list(class_scores(logits, self.predictor.config))

    def answer(self, output: torch.Tensor, prepared: Prepared, params: RequestParams) -> list[dict[str, Any]]:
        ranked = top_classes(output[None], self.predictor.id2label, params.top_k)[0]
        return [{"label": guess["label"], "score": guess["score"]} for guess in ranked]

    def visualize(self, prepared: Prepared, params: RequestParams) -> bytes:
        from ..visualization import display_stats, modulator_figure, parse_blocks, write_figure_png

        if self.model is None:
            raise ServingError(
                501, "not_available", "an ONNX file holds no modulators to draw; serve the PyTorch checkpoint"
            )
        try:
            blocks = parse_blocks(params.blocks, self.model.config.depths)
        except ValueError as error:
            raise ServingError(422, "invalid_parameter", f"blocks: {error}") from None
        mean, std = display_stats(self.predictor.processor)
        pixel_values = prepared.inputs[None].to(self.device, next(self.model.parameters()).dtype)
        figure = modulator_figure(
            self.model, pixel_values, mean, std, blocks=blocks, top_k=params.top_k, alpha=params.alpha
        )
        buffer = io.BytesIO()
        write_figure_png(figure, buffer)
        return buffer.getvalue()

    def describe(self) -> dict[str, Any]:
        from ..visualization import block_title

        depths = self.model.config.depths if self.model is not None else None
        return {
            **super().describe(),
            "model_class": type(self.model).__name__ if self.model is not None else "ONNX file",
            "blocks": [block_title(i, depths) for i in range(sum(depths))] if depths else None,
            **_processor_fields(self.predictor.processor),
        }


# ------------------------------------------------------------------------------------------------
class MaskedImageModelingService(Service):
    """A SimMIM model: each image masked (`mask_ratio`, `seed`) and reconstructed."""

    task = "masked-image-modeling"

    def __init__(self, model: FocalNetForMaskedImageModeling, processor: FocalNetImageProcessor, options) -> None:
        super().__init__(model, options)
        self.processor = processor

    def prepare(self, image: Image.Image, params: RequestParams) -> Prepared:
        from ..visualization import seeded_mask

        inputs = self.processor.transform(image)
        ratio = DEFAULT_MASK_RATIO if params.mask_ratio is None else params.mask_ratio
        try:
            mask = seeded_mask(self.model.config, tuple(inputs.shape[-2:]), ratio, seed=params.seed)
        except ValueError as error:
            raise ServingError(422, "invalid_parameter", str(error)) from None
        return Prepared(image, inputs, tuple(inputs.shape), mask)

    def forward(self, batch: list[Prepared]) -> list[dict[str, torch.Tensor]]:
        """Per image: the reconstruction, the pixel mask and the SimMIM loss of that image alone."""
        pixel_values = torch.stack([item.inputs for item in batch]).to(self.device)
        masks = torch.stack([item.mask for item in batch]).to(self.device)
        with torch.inference_mode():
            output = self.model(pixel_values.to(self.dtype), bool_masked_pos=masks)
            reconstruction = output.reconstruction.float()
            pixel_mask = self.model.pixel_mask(masks, *pixel_values.shape[-2:]).float()
            error = (pixel_values - reconstruction).abs() * pixel_mask
            losses = error.sum((1, 2, 3)) / (pixel_mask.sum((1, 2, 3)) + 1e-5) / pixel_values.shape[1]
        return [
            {"reconstruction": r.cpu(), "pixel_mask": m.cpu(), "loss": loss.item()}
            for r, m, loss in zip(reconstruction, pixel_mask, losses, strict=True)
        ]

    def _panels(self, prepared: Prepared, output: dict[str, torch.Tensor]) -> list[Any]:
        from ..visualization import display_stats, reconstruction_panels

        mean, std = display_stats(self.processor)
        return reconstruction_panels(
            prepared.inputs[None], output["reconstruction"][None], output["pixel_mask"][None], mean, std
        )

    def answer(self, output: dict[str, torch.Tensor], prepared: Prepared, params: RequestParams) -> dict[str, Any]:
        from PIL import Image

        _, masked, rebuilt, composite = (Image.fromarray(panel[0]) for panel in self._panels(prepared, output))
        return {
            "loss": output["loss"],
            "mask_ratio": DEFAULT_MASK_RATIO if params.mask_ratio is None else params.mask_ratio,
            "mask": binary_mask_base64(output["pixel_mask"][0] > 0.5),
            "masked": png_base64(masked),
            "reconstruction": png_base64(rebuilt),
            "composite": png_base64(composite),
        }

    def visualize(self, prepared: Prepared, params: RequestParams) -> bytes:
        from ..visualization import display_stats, reconstruction_grid

        output = self.forward([prepared])[0]
        mean, std = display_stats(self.processor)
        grid = reconstruction_grid(
            prepared.inputs[None], output["reconstruction"][None], output["pixel_mask"][None], mean, std
        )
        return png_bytes(grid)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **_processor_fields(self.processor), "default_mask_ratio": DEFAULT_MASK_RATIO}


# ------------------------------------------------------------------------------------------------
class DetectionService(Service):
    """A torchvision detector on FocalNet (Faster R-CNN, RetinaNet; Mask R-CNN adds masks)."""

    task = "object-detection"

    def __init__(self, model: nn.Module, options: ServeOptions) -> None:
        from ..detection.predict import DetectionPredictor

        super().__init__(model, options)
        self.predictor = DetectionPredictor(model, options.threshold)

    @property
    def labels(self) -> list[str]:
        names = self.predictor.config.label_names
        return [names[i] for i in sorted(names)]

    def prepare(self, image: Image.Image, params: RequestParams) -> Prepared:
        from torchvision.transforms.v2 import functional

        inputs = functional.pil_to_tensor(image)
        return Prepared(image, inputs, tuple(inputs.shape))

    def forward(self, batch: list[Prepared]) -> list[dict[str, torch.Tensor]]:
        with _autocast(self.device, self.dtype):
            return self.predictor.detect([item.inputs for item in batch])

    def answer(self, output: dict[str, torch.Tensor], prepared: Prepared, params: RequestParams) -> list[dict]:
        kept = self.predictor.above(output, params.threshold)
        names = self.predictor.config.label_names
        answers = []
        for index, (label, score, box) in enumerate(
            zip(kept["labels"].tolist(), kept["scores"].tolist(), kept["boxes"].tolist(), strict=True)
        ):
            xmin, ymin, xmax, ymax = (int(value) for value in box)  # transformers' pipeline truncates too
            entry = {
                "label": names.get(label, str(label)),
                "score": score,
                "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            }
            if "masks" in kept:
                entry["mask"] = binary_mask_base64(kept["masks"][index, 0] > 0.5)
            answers.append(entry)
        return answers

    def visualize(self, prepared: Prepared, params: RequestParams) -> bytes:
        from PIL import Image

        from ..detection.predict import draw_detections

        detections = self.predictor.above(self.forward([prepared])[0], params.threshold)
        drawn = draw_detections(prepared.inputs, detections, self.predictor.config.label_names)
        return png_bytes(Image.fromarray(drawn.permute(1, 2, 0).numpy()))

    def describe(self) -> dict[str, Any]:
        config = self.predictor.config
        return {
            **super().describe(),
            "architecture": config.architecture,
            "instance_masks": config.architecture == "mask_rcnn",
            "input_size": None,
            "preprocessing": {
                key: config.torchvision_kwargs[key]
                for key in ("min_size", "max_size", "image_mean", "image_std")
                if key in config.torchvision_kwargs
            },
        }


# ------------------------------------------------------------------------------------------------
class SegmentationService(Service):
    """An UperNet semantic segmenter: the label of every pixel, as per-class masks."""

    task = "image-segmentation"

    def __init__(self, model: nn.Module, preprocessing: SegmentationPreprocessing, options: ServeOptions) -> None:
        super().__init__(model, options)
        self.preprocessing = preprocessing
        self.names = {int(label): name for label, name in model.config.id2label.items()}

    @property
    def labels(self) -> list[str]:
        return [self.names.get(i, str(i)) for i in range(self.model.config.num_labels)]

    def prepare(self, image: Image.Image, params: RequestParams) -> Prepared:
        inputs = self.preprocessing(image)
        return Prepared(image, inputs, (tuple(inputs.shape), image.size))

    def forward(self, batch: list[Prepared]) -> list[torch.Tensor]:
        from ..segmentation.inference import predict_logits

        pixel_values = torch.stack([item.inputs for item in batch]).to(self.device)
        width, height = batch[0].image.size
        with _autocast(self.device, self.dtype):
            logits = predict_logits(self.model, pixel_values, (height, width))
        return list(logits.argmax(dim=1).cpu())

    def answer(self, output: torch.Tensor, prepared: Prepared, params: RequestParams) -> Any:
        from ..segmentation.predict import label_map_image

        segments = [
            {"label": self.names.get(label, str(label)), "score": None, "mask": binary_mask_base64(output == label)}
            for label in output.unique().tolist()
        ]
        if not params.label_map:
            return segments
        return {"segments": segments, "label_map": png_base64(label_map_image(output, self.model.config.num_labels))}

    def visualize(self, prepared: Prepared, params: RequestParams) -> bytes:
        from ..segmentation.predict import draw_overlay

        labels = self.forward([prepared])[0]
        return png_bytes(draw_overlay(prepared.image, labels, self.names, alpha=params.alpha, ignore_index=None))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input_size": None, "preprocessing": self.preprocessing.to_dict()}


# ------------------------------------------------------------------------------------------------
def _prepare_model(model: nn.Module, options: ServeOptions, convert_dtype: bool) -> nn.Module:
    """On the device, in eval mode, folded for inference (`options.fuse`), in bf16 where asked and
    the task runs bf16 weights (classifiers, SimMIM; the others run under autocast)."""
    from ..inference import fuse_for_inference

    model = model.to(options.device).eval()
    if options.fuse:
        fuse_for_inference(model)
    if convert_dtype and options.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    return model


def model_name(source: Any) -> str:
    """The name a model is served under: its directory's or file's name, or its class's."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return (path.stem if path.is_file() else path.name) or str(source)
    return type(source).__name__


def load_service(
    source: str | os.PathLike | nn.Module,
    options: ServeOptions,
    onnx: str | os.PathLike | None = None,
    preprocessing: FocalNetImageProcessor | SegmentationPreprocessing | None = None,
) -> Service:
    """The service for anything `--model` takes (registry name, hub id, HF directory, weights file,
    a saved detector or UperNet, a SimMIM model), a model object, or an ONNX classifier file.

    `preprocessing` replaces what the checkpoint says (needed only for model objects whose
    preprocessing is not HF's default, or not an UperNet's)."""
    if onnx is not None:
        from ..export import OnnxPredictor

        predictor = OnnxPredictor.from_file(onnx)
        if preprocessing is not None:
            predictor.processor = preprocessing
        return ClassificationService(predictor, options)
    model, processor = _load_model(source, preprocessing)
    from ..segmentation import UperNetForSemanticSegmentation

    if isinstance(model, UperNetForSemanticSegmentation):
        return SegmentationService(_prepare_model(model, options, convert_dtype=False), processor, options)
    if isinstance(model, FocalNetForMaskedImageModeling):
        return MaskedImageModelingService(_prepare_model(model, options, convert_dtype=True), processor, options)
    if isinstance(model, FocalNetForImageClassification):
        predictor = Predictor(_prepare_model(model, options, convert_dtype=True), processor)
        return ClassificationService(predictor, options)
    if getattr(model, "detector_config", None) is not None:
        return DetectionService(_prepare_model(model, options, convert_dtype=False), options)
    raise ValueError(
        f"cannot serve a {type(model).__name__}: give an image classifier, a masked-image-modeling model, "
        "a detector built by focalnet.detection, or an UperNetForSemanticSegmentation"
    )


def _load_model(source: Any, preprocessing: Any) -> tuple[nn.Module, Any]:
    """The model and its preprocessing, from a model object or anything `--model` takes."""
    from ..segmentation import UperNetForSemanticSegmentation, is_upernet_directory
    from ..segmentation.inference import SegmentationPreprocessing
    from ..visualization import load_classifier_or_simmim

    if isinstance(source, nn.Module):
        if isinstance(source, UperNetForSemanticSegmentation):
            return source, preprocessing or SegmentationPreprocessing()
        config = getattr(source, "config", None)
        if preprocessing is None and hasattr(config, "image_size_2d"):
            preprocessing = FocalNetImageProcessor.from_preset("hf", image_size=config.image_size_2d[0])
        return source, preprocessing
    if is_detector_source(source):
        from ..detection.models import from_pretrained

        return from_pretrained(source), None
    if is_upernet_directory(source):
        model = UperNetForSemanticSegmentation.from_pretrained(source)
        return model, preprocessing or SegmentationPreprocessing.load(source)
    model = load_classifier_or_simmim(source)
    return model, preprocessing or processor_for(source, model.config.image_size_2d[0])


def forward_grouped(service: Service, items: Sequence[Prepared]) -> list[Any]:
    """`service.forward` over items of any keys: one batch per key, outputs in the items' order."""
    outputs: list[Any] = [None] * len(items)
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.key, []).append(index)
    for indices in groups.values():
        for index, output in zip(indices, service.forward([items[i] for i in indices]), strict=True):
            outputs[index] = output
    return outputs
