"""UperNet's decode head and the auxiliary FCN head, over any list of NCHW feature maps.

Module names and state-dict keys are those of transformers' `UperNetHead` / `UperNetFCNHead`
(which are mmsegmentation's after two renames: bn -> batch_norm, conv_seg -> classifier), so
weights move between the three. The heads run on the maps of any backbone, fine to coarse.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import AUXILIARY_INDEX, UperNetConfig


class ConvModule(nn.Sequential):
    """Convolution (no bias), BatchNorm, ReLU: mmcv's ConvModule, under transformers' names."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        padding = (kernel_size // 2) * dilation
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
                batch_norm=nn.BatchNorm2d(out_channels),
                activation=nn.ReLU(inplace=True),
            )
        )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.ModuleList):
    """PSPNet's pyramid pooling: the map average-pooled to each scale, projected, upsampled back."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1)) for scale in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(block(x), x.shape[2:]) for block in self]


class UperNetHead(nn.Module):
    """UperNet (Xiao et al., 2018): pyramid pooling on the coarsest map, a top-down feature pyramid
    over all of them, everything fused at the finest map's resolution and classified there."""

    def __init__(self, config: UperNetConfig, in_channels: Sequence[int]) -> None:
        super().__init__()
        channels = config.hidden_size
        self.in_channels = list(in_channels)
        self.channels = channels
        # PSP module on the coarsest map
        self.psp_modules = PyramidPooling(config.pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(config.pool_scales) * channels, channels, 3)
        # feature pyramid on the others
        self.lateral_convs = nn.ModuleList(ConvModule(width, channels, 1) for width in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_labels, H, W) at the resolution of the first (finest) map."""
        # lateral projections, the coarsest through the pyramid pooling
        coarsest = feature_maps[-1]
        pooled = self.bottleneck(torch.cat([coarsest, *self.psp_modules(coarsest)], dim=1))
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feature_maps, strict=False)] + [pooled]
        # top-down: each level adds the upsampled coarser one
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        # smooth each level, bring all to the finest resolution, fuse, classify
        outputs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = outputs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outputs[0], *(_resize(x, size) for x in outputs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class UperNetFCNHead(nn.Module):
    """The auxiliary head: `num_convs` 3x3 ConvModules on one backbone map (stage 3), optionally
    concatenated with their input, and a classifier; it adds a training signal to the middle stages."""

    def __init__(
        self,
        config: UperNetConfig,
        in_channels: Sequence[int],
        in_index: int = AUXILIARY_INDEX,
        kernel_size: int = 3,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        width = config.auxiliary_in_channels or in_channels[in_index]
        channels = config.auxiliary_channels
        self.in_index = in_index
        self.concat_input = config.auxiliary_concat_input
        widths = [width] + [channels] * (config.auxiliary_num_convs - 1)
        convs = [ConvModule(w, channels, kernel_size, dilation) for w in widths[: config.auxiliary_num_convs]]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        out_width = channels if convs else width
        if self.concat_input:
            self.conv_cat = ConvModule(width + out_width, channels, kernel_size)
            out_width = channels
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(out_width, config.num_labels, kernel_size=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_labels, h, w) at the resolution of map `in_index`."""
        x = feature_maps[self.in_index]
        output = self.convs(x)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.classifier(self.dropout(output))
