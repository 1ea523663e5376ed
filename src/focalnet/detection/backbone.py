"""FocalNet as the backbone of torchvision's detectors: stage maps through a feature pyramid (SPEC 10).

torchvision's `BackboneWithFPN` taps only direct children of a module, which FocalNet's stages
are not, so `FocalNetFPN` wraps our `FocalNetBackbone` (each stage's output before its
downsample, through its own LayerNorm, strides 4-32) and torchvision's `FeaturePyramidNetwork`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..dense import DENSE_FOCAL_WINDOW, dense_backbone
from ..modeling import FocalNetBackbone

__all__ = ["DENSE_FOCAL_WINDOW", "FocalNetFPN", "dense_backbone"]


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
