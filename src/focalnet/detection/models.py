"""torchvision's Faster R-CNN, Mask R-CNN and RetinaNet on a FocalNet backbone; saving and loading them.

The builders return torchvision's own classes, so everything written for them (training loops,
`torchvision.ops`, export) applies. Labels are contiguous, 1..K for the K categories, 0 the
background (RetinaNet, which has no background class, leaves output 0 unused, as torchvision's
COCO RetinaNet does); each model carries a `DetectorConfig` (`model.detector_config`) that maps
its labels back to the dataset's category ids and names and records how it was built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..checkpoints import SAFETENSORS_NAME, CheckpointError, load_state_dict, save_state_dict
from ..configuration import CONFIG_NAME, FocalNetConfig
from .backbone import FocalNetFPN, _torchvision_ops, dense_backbone

CONFIG_FORMAT = "focalnet-detector/1"
ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "retinanet")
RETINANET_STAGES = (2, 3, 4)
"""RetinaNet's pyramid, as torchvision's: strides 8-32 from the backbone, 64 and 128 (P6, P7) on top."""


@dataclass
class DetectorConfig:
    """How a detector was built: what `save_pretrained` writes to config.json and `from_pretrained` reads."""

    architecture: str
    backbone_config: dict[str, Any]
    categories: list[dict[str, Any]]
    """The dataset's categories in label order ({"id", "name"}): label i + 1 is categories[i]."""
    fpn_channels: int = 256
    trainable_stages: int | None = None
    anchor_sizes: list[list[int]] | None = None
    aspect_ratios: list[list[float]] | None = None
    torchvision_kwargs: dict[str, Any] = field(default_factory=dict)
    """The JSON-able keyword arguments given to the torchvision class (min_size, max_size, ...)."""
    custom_arguments: list[str] = field(default_factory=list)
    """Arguments that were modules or other objects: `from_pretrained` needs them passed again."""

    @property
    def num_classes(self) -> int:
        return len(self.categories) + 1

    @property
    def label_names(self) -> dict[int, str]:
        return {i + 1: str(category["name"]) for i, category in enumerate(self.categories)}

    @property
    def label_to_category(self) -> list[int]:
        """Dataset category id of each label (index 0, the background, maps to 0)."""
        return [0] + [int(category["id"]) for category in self.categories]


def _detection_classes() -> dict[str, type[nn.Module]]:
    try:
        from torchvision.models import detection
    except ImportError as error:
        raise ImportError("detection needs torchvision: pip install 'focalnet[detection]'") from error
    return {"faster_rcnn": detection.FasterRCNN, "mask_rcnn": detection.MaskRCNN, "retinanet": detection.RetinaNet}


def _categories(num_classes: int | None, categories: Sequence[dict | str] | None) -> list[dict[str, Any]]:
    """Categories from names or {"id", "name"} dicts, or numbered ones for `num_classes` (background included)."""
    if categories is None:
        if num_classes is None or num_classes < 2:
            raise ValueError("give num_classes (including the background, so >= 2) or the categories")
        return [{"id": i, "name": f"class_{i}"} for i in range(1, num_classes)]
    listed = [c if isinstance(c, dict) else {"id": i + 1, "name": str(c)} for i, c in enumerate(categories)]
    if not listed:
        raise ValueError("give at least one category (the background is added)")
    if any("id" not in c or "name" not in c for c in listed):
        raise ValueError("each category needs an 'id' and a 'name'")
    if num_classes is not None and num_classes != len(listed) + 1:
        raise ValueError(f"num_classes={num_classes} but {len(listed)} categories (+1 background) were given")
    ids = [int(c["id"]) for c in listed]
    if len(set(ids)) != len(ids):
        raise ValueError(f"category ids must be distinct, got {ids}")
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in listed]


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _anchor_generator(architecture: str, sizes: Sequence[Sequence[int]], ratios: Sequence[Sequence[float]] | None):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(int(s) for s in level) for level in sizes)
    ratios = tuple(tuple(float(r) for r in level) for level in ratios or [(0.5, 1.0, 2.0)] * len(sizes))
    if len(ratios) != len(sizes):
        raise ValueError(f"aspect_ratios needs one entry per pyramid level ({len(sizes)}), got {len(ratios)}")
    return AnchorGenerator(sizes, ratios)


def build_detector(
    architecture: str,
    backbone: str | os.PathLike | FocalNetConfig = "focalnet-tiny",
    num_classes: int | None = None,
    *,
    categories: Sequence[dict | str] | None = None,
    fpn_channels: int = 256,
    trainable_stages: int | None = None,
    gradient_checkpointing: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    anchor_sizes: Sequence[Sequence[int]] | None = None,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    **torchvision_kwargs: Any,
) -> nn.Module:
    """The torchvision detector `architecture` ("faster_rcnn", "mask_rcnn" or "retinanet") on FocalNet.

    `backbone`: a preset name (random weights), a `FocalNetConfig`, or anything `from_pretrained`
    accepts (its encoder is loaded), with the dense defaults of `dense_backbone` unless
    `backbone_overrides` says otherwise. `num_classes` counts the background, as in torchvision;
    `categories` (names, or {"id", "name"} with the dataset's ids) can replace it.
    `anchor_sizes`/`aspect_ratios` build the anchor generator (one entry per pyramid level: five);
    every other keyword (min_size, max_size, image_mean, image_std, box_score_thresh, ...) goes to
    the torchvision class.
    """
    classes = _detection_classes()
    if architecture not in classes:
        raise ValueError(f"unknown detector {architecture!r}; choose from {ARCHITECTURES}")
    listed = _categories(num_classes, categories)
    fpn_ops = _torchvision_ops()
    stages = RETINANET_STAGES if architecture == "retinanet" else (1, 2, 3, 4)
    extra = fpn_ops.LastLevelP6P7(fpn_channels, fpn_channels) if architecture == "retinanet" else None
    body = dense_backbone(backbone, stages, **(backbone_overrides or {}))
    fpn = FocalNetFPN(body, fpn_channels, stages, extra, trainable_stages, gradient_checkpointing)
    arguments = dict(torchvision_kwargs)
    if anchor_sizes is not None:
        key = "anchor_generator" if architecture == "retinanet" else "rpn_anchor_generator"
        arguments[key] = _anchor_generator(architecture, anchor_sizes, aspect_ratios)
    elif aspect_ratios is not None:
        raise ValueError("aspect_ratios needs anchor_sizes")
    model = classes[architecture](fpn, num_classes=len(listed) + 1, **arguments)
    model.detector_config = DetectorConfig(
        architecture=architecture,
        backbone_config=body.config.to_dict(),
        categories=listed,
        fpn_channels=fpn_channels,
        trainable_stages=trainable_stages,
        anchor_sizes=[list(level) for level in anchor_sizes] if anchor_sizes is not None else None,
        aspect_ratios=[list(level) for level in aspect_ratios] if aspect_ratios is not None else None,
        torchvision_kwargs={k: v for k, v in torchvision_kwargs.items() if _json_able(v)},
        custom_arguments=sorted(k for k, v in torchvision_kwargs.items() if not _json_able(v)),
    )
    return model


def fasterrcnn_focalnet(
    backbone: str | os.PathLike | FocalNetConfig = "focalnet-tiny", num_classes: int | None = None, **kwargs: Any
) -> nn.Module:
    """torchvision's `FasterRCNN` on a FocalNet FPN (see `build_detector` for the arguments)."""
    return build_detector("faster_rcnn", backbone, num_classes, **kwargs)


def maskrcnn_focalnet(
    backbone: str | os.PathLike | FocalNetConfig = "focalnet-tiny", num_classes: int | None = None, **kwargs: Any
) -> nn.Module:
    """torchvision's `MaskRCNN` on a FocalNet FPN (see `build_detector` for the arguments)."""
    return build_detector("mask_rcnn", backbone, num_classes, **kwargs)


def retinanet_focalnet(
    backbone: str | os.PathLike | FocalNetConfig = "focalnet-tiny", num_classes: int | None = None, **kwargs: Any
) -> nn.Module:
    """torchvision's `RetinaNet` on a FocalNet FPN, strides 8-128 (see `build_detector` for the arguments)."""
    return build_detector("retinanet", backbone, num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# saving and loading
def detector_config(model: nn.Module) -> DetectorConfig:
    """The `DetectorConfig` of a detector built here (through DDP, EMA or compile wrappers too)."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        config = getattr(candidate, "detector_config", None)
        if isinstance(config, DetectorConfig):
            return config
    raise ValueError(
        f"{type(model).__name__} has no detector_config: build it with focalnet.detection's builders "
        "(fasterrcnn_focalnet, maskrcnn_focalnet, retinanet_focalnet) to save it"
    )


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """`config.json` (architecture, backbone config, categories, torchvision arguments) and
    `model.safetensors`, each written atomically; `from_pretrained` rebuilds the same detector."""
    config = detector_config(model)
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"{directory} is a file; save_pretrained needs a directory")
    module = model if getattr(model, "detector_config", None) is config else getattr(model, "module", model)
    save_state_dict(module.state_dict(), directory / SAFETENSORS_NAME)
    with atomic_write(directory / CONFIG_NAME) as handle:
        json.dump({"format": CONFIG_FORMAT, **asdict(config)}, handle, indent=2)


def is_detector_directory(source: str | os.PathLike) -> bool:
    """Whether `source` is a directory written by `save_pretrained` here."""
    path = Path(source) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == CONFIG_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_detector_config(source: str | os.PathLike) -> DetectorConfig:
    path = Path(source) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no detector at {source}: {path} does not exist")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); save the detector again") from None
    if not isinstance(values, dict) or values.pop("format", None) != CONFIG_FORMAT:
        raise ValueError(f"{path} is not a focalnet detector config (format {CONFIG_FORMAT})")
    try:
        return DetectorConfig(**values)
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from None


def from_pretrained(source: str | os.PathLike, device: str | torch.device = "cpu", **custom: Any) -> nn.Module:
    """The detector saved in `source` by `save_pretrained`, in eval mode. Arguments that were not
    JSON (custom modules) must be passed again as keywords."""
    config = read_detector_config(source)
    missing = [name for name in config.custom_arguments if name not in custom]
    if missing:
        raise ValueError(f"{source} was built with custom {', '.join(missing)}: pass them to from_pretrained again")
    model = build_detector(
        config.architecture,
        FocalNetConfig.from_dict(config.backbone_config),
        categories=config.categories,
        fpn_channels=config.fpn_channels,
        trainable_stages=config.trainable_stages,
        anchor_sizes=config.anchor_sizes,
        aspect_ratios=config.aspect_ratios,
        **config.torchvision_kwargs,
        **custom,
    )
    state = load_state_dict(Path(source) / SAFETENSORS_NAME)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"the weights in {source} do not fit its config.json: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; save the detector again"
        )
    return model.to(device).eval()
