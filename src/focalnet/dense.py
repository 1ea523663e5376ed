"""FocalNet backbones for dense heads (detection, segmentation) with the paper's settings (SPEC 10).

Dense models use each stage's output before its downsample, through its own LayerNorm (strides
4-32), a focal window of 9 (a classification checkpoint's kernels are zero-padded to reach it, so
its outputs are unchanged) and the paper's drop path for the model size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import build_from_resolved, resolve
from .configuration import FocalNetConfig
from .modeling import FocalNetBackbone
from .presets import PRESETS, paper_drop_path

DENSE_FOCAL_WINDOW = 9
"""The focal window of the paper's detection and segmentation backbones (kernels 9, 11, ...)."""


def dense_backbone(
    source: str | os.PathLike | FocalNetConfig = "focalnet-tiny",
    stages: Sequence[int] = (1, 2, 3, 4),
    **overrides: Any,
) -> FocalNetBackbone:
    """A `FocalNetBackbone` with the dense-task defaults of SPEC 10, returning `stages` with norms.

    `source` is a preset name (random weights) or anything `from_pretrained` accepts (a classifier,
    masked-image-modeling, backbone or original detection checkpoint: the encoder is loaded, heads
    dropped); a `FocalNetConfig` is taken as it is (random weights). Defaults, each replaced by an
    entry of `overrides`: focal window 9 (a checkpoint with a smaller one is expanded, zero-padding
    its kernels, so its outputs are unchanged), the paper's drop path for the model size, and
    `use_backbone_layernorm`.
    """
    stage_names = [f"stage{i}" for i in stages]
    if isinstance(source, FocalNetConfig):  # an exact architecture (a saved detector's): no defaults
        settings = {"use_backbone_layernorm": True, "out_features": stage_names, **overrides}
        return fresh_backbone(FocalNetConfig.from_dict(source.to_dict(), **settings))
    name = str(source)
    if name in PRESETS:
        return fresh_backbone(dense_config(name, stages, **overrides))
    drop_path = paper_drop_path(Path(name).name)
    settings = {"drop_path_rate": drop_path, "use_backbone_layernorm": True, "out_features": stage_names, **overrides}
    window = settings.pop("focal_windows", None)
    levels = settings.pop("focal_levels", None)
    resolved = resolve(source, settings)
    current = resolved.config
    target = {
        "focal_windows": window or [max(w, DENSE_FOCAL_WINDOW) for w in current.focal_windows],
        "focal_levels": levels or current.focal_levels,
    }
    changed = {key: value for key, value in target.items() if list(value) != list(getattr(current, key))}
    return build_from_resolved(FocalNetBackbone, resolved, settings, changed).train()


def dense_config(
    preset: str = "focalnet-tiny", stages: Sequence[int] = (1, 2, 3, 4), **overrides: Any
) -> FocalNetConfig:
    """The config of a preset with the dense defaults of `dense_backbone` (window 9, paper drop path,
    output norms, `stages` as the outputs), then `overrides`."""
    config = FocalNetConfig.from_preset(preset)
    settings = {
        "drop_path_rate": paper_drop_path(preset),
        "use_backbone_layernorm": True,
        "out_features": [f"stage{i}" for i in stages],
        "focal_windows": [max(w, DENSE_FOCAL_WINDOW) for w in config.focal_windows],
        **overrides,
    }
    return FocalNetConfig.from_dict(config.to_dict(), **settings)


def fresh_backbone(config: FocalNetConfig) -> FocalNetBackbone:
    """A randomly initialised backbone whose stem bias is random too (HF's init sets it to zero).

    Detectors zero-pad the images of a batch to one size. With a zero stem bias every padded
    position enters the network as the zero vector, whose LayerNorm has zero variance: each
    LayerNorm it passes multiplies its gradient by 1/sqrt(eps), about 1e17 by stage 4 of
    FocalNet-T, and training from scratch stalls (clipped to nothing) or diverges.
    """
    backbone = FocalNetBackbone(config)
    stem = backbone.focalnet.embeddings.patch_embeddings.projection
    with torch.no_grad():
        stem.bias.normal_(0.0, config.initializer_range)
    return backbone
