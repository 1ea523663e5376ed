"""Size and cost of a configuration: parameters, multiply-adds and output shapes.

Everything runs on the meta device, so even the 680 M-parameter presets cost no memory and
no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .configuration import FocalNetConfig
from .modeling import FocalNetBackbone, FocalNetForImageClassification


@dataclass(frozen=True)
class ModelStats:
    params: int  # with the classification head
    params_without_head: int
    macs: int  # multiply-adds of one image at `image_size` (matmul and convolution)
    image_size: tuple[int, int]
    feature_shapes: list[tuple[int, int, int]]  # (C, H, W) of each stage's output
    logits_shape: tuple[int, ...]


def model_stats(config: FocalNetConfig, image_size: tuple[int, int] | None = None) -> ModelStats:
    image_size = image_size or config.image_size_2d
    stages = config.stage_names[1:]
    config = FocalNetConfig.from_dict(config.to_dict(), out_features=stages)
    with torch.device("meta"):
        classifier = FocalNetForImageClassification(config).eval()
        backbone = FocalNetBackbone(config).eval()
        pixels = torch.empty(1, config.num_channels, *image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        logits = classifier(pixels).logits
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
    params = classifier.num_parameters()
    return ModelStats(
        params=params,
        params_without_head=classifier.focalnet.num_parameters(),
        macs=counter.get_total_flops() // 2,
        image_size=tuple(image_size),
        feature_shapes=[tuple(m.shape[1:]) for m in maps],
        logits_shape=tuple(logits.shape),
    )
