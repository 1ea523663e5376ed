"""int8 dynamic quantisation of the Linear layers (weights int8, activations quantised per batch).

The depthwise and patch convolutions stay in float; blocks with quantised layers take the
plain (unfused) path, since the fused kernels read float weights.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A quantised copy of `model` for CPU inference; the original is left untouched."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)
