"""FocalNet as the backbone of torchvision's detectors: stage maps through a feature pyramid (SPEC 10).

torchvision's `BackboneWithFPN` taps only direct children of a module, which FocalNet's stages
are not, so `FocalNetFPN` wraps our `FocalNetBackbone` (each stage's output before its
downsample, through its own LayerNorm, strides 4-32) and torchvision's `FeaturePyramidNetwork`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configuration import FocalNetConfig
from ..modeling import FocalNetBackbone
from ..presets import PRESETS, paper_drop_path

DENSE_FOCAL_WINDOW = 9
"""The focal window of the paper's detection and segmentation backbones (kernels 9, 11, ...)."""


def _torchvision_ops():
    try:
        from torchvision.ops import feature_pyramid_network as fpn
    except ImportError as error:
        raise ImportError("detection needs torchvision: pip install 'focalnet[detection]'") from error
    return fpn


class FocalNetFPN(nn.Module):
    """A `FocalNetBackbone` and a feature pyramid: the backbone torchvision's detectors expect.

    Returns an OrderedDict of `out_channels`-wide maps, "0".."3" for the stages in `stages`
    (strides 4, 8, 16, 32 for all four) and the extra levels of `extra_blocks` (default: "pool",
    a max-pooled stride-64 level, as torchvision's ResNet FPN).

    `trainable_stages` (0-4) counts from the top, like torchvision's `trainable_layers`: below all
    four, the stem and the other stages are frozen (no gradients, and kept in eval mode so drop path stays off);
    the output norms and the pyramid always train. `gradient_checkpointing` recomputes each block
    in the backward pass instead of keeping its activations.
    """

    def __init__(
        self,
        backbone: FocalNetBackbone,
        out_channels: int = 256,
        stages: Sequence[int] = (1, 2, 3, 4),
        extra_blocks: nn.Module | None = None,
        trainable_stages: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        num_stages = backbone.config.num_stages
        wanted = [backbone.config.stage_names[i] for i in stages]
        if list(backbone.out_features) != wanted:
            raise ValueError(
                f"the backbone returns {backbone.out_features}, the pyramid needs {wanted}; "
                f"build it with out_features={wanted}"
            )
        trainable_stages = num_stages if trainable_stages is None else trainable_stages
        if not 0 <= trainable_stages <= num_stages:
            raise ValueError(f"trainable_stages must be in 0..{num_stages}, got {trainable_stages}")
        fpn = _torchvision_ops()
        self.body = backbone
        self.fpn = fpn.FeaturePyramidNetwork(
            [backbone.num_features[i] for i in stages],
            out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else fpn.LastLevelMaxPool(),
        )
        self.out_channels = out_channels
        self.trainable_stages = trainable_stages
        encoder = backbone.focalnet
        encoder.layernorm.requires_grad_(False)  # the classifier's norm: no dense output uses it
        frozen_stages = num_stages - trainable_stages
        stem = [encoder.embeddings] if frozen_stages else []
        self.frozen: list[nn.Module] = [*stem, *encoder.encoder.stages[:frozen_stages]]  # not registered twice
        for module in self.frozen:
            module.requires_grad_(False)
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
        self.train()

    def train(self, mode: bool = True) -> FocalNetFPN:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(images, return_dict=True).feature_maps
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(maps)))


# ------------------------------------------------------------------------------------------------
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
        return _fresh(FocalNetConfig.from_dict(source.to_dict(), **settings))
    name = str(source)
    config = FocalNetConfig.from_preset(name) if name in PRESETS else None
    drop_path = paper_drop_path(Path(name).name)
    settings = {"drop_path_rate": drop_path, "use_backbone_layernorm": True, "out_features": stage_names, **overrides}
    window = settings.pop("focal_windows", None)
    if config is not None:
        settings["focal_windows"] = window or [max(w, DENSE_FOCAL_WINDOW) for w in config.focal_windows]
        return _fresh(FocalNetConfig.from_dict(config.to_dict(), **settings))
    from ..checkpoints import build_from_resolved, resolve

    levels = settings.pop("focal_levels", None)
    resolved = resolve(source, settings)
    current = resolved.config
    target = {
        "focal_windows": window or [max(w, DENSE_FOCAL_WINDOW) for w in current.focal_windows],
        "focal_levels": levels or current.focal_levels,
    }
    changed = {key: value for key, value in target.items() if list(value) != list(getattr(current, key))}
    return build_from_resolved(FocalNetBackbone, resolved, settings, changed).train()


def _fresh(config: FocalNetConfig) -> FocalNetBackbone:
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
