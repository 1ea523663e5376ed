"""Weight transfer to more focal levels or larger kernels (SPEC 4.4, as in the paper's detection runs).

Depthwise kernels grow by zero-padding at the centre, which leaves their output unchanged.
`projection_in` keeps its query and context rows and the existing level gates and global gate
(its last row); the rows of new levels start at zero, so a new level contributes nothing until
trained. A new level's kernel starts as the previous level's, zero-padded to its size; it is
part of the hierarchy, so the global context it feeds shifts slightly.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from .configuration import FocalNetConfig

_PROJECTION_IN = re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.modulation\.projection_in\.(weight|bias)$")
_FOCAL = re.compile(r"^(.*encoder\.stages\.(\d+)\.layers\.\d+\.modulation\.focal_layers\.)(\d+)\.0\.weight$")


def _pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0:
        raise ValueError(f"cannot shrink a {kernel.shape[-1]}x{kernel.shape[-1]} kernel to {size}x{size}")
    return F.pad(kernel, (pad, pad, pad, pad))


def expand_focal_weights(state: dict[str, torch.Tensor], config: FocalNetConfig) -> dict[str, torch.Tensor]:
    """HF-layout `state` -> the same weights for `config`'s (larger) focal levels and windows."""
    out = dict(state)
    blocks: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = _FOCAL.search(key)
        if match:
            blocks.setdefault(match[1], {})[int(match[3])] = value
    for prefix, kernels in blocks.items():
        stage = int(_FOCAL.search(prefix + "0.0.weight")[2])
        levels, window = config.focal_levels[stage], config.focal_windows[stage]
        if len(kernels) > levels:
            raise ValueError(f"stage {stage} has {len(kernels)} focal levels in the weights, {levels} in the config")
        for level in range(levels):
            source = kernels.get(level, out.get(f"{prefix}{level - 1}.0.weight"))
            out[f"{prefix}{level}.0.weight"] = _pad_kernel(source, window + 2 * level)
    for key, value in state.items():
        match = _PROJECTION_IN.search(key)
        if not match:
            continue
        stage = int(match[1])
        dim = config.embed_dim * 2**stage
        new_gates = config.focal_levels[stage] + 1 - (value.shape[0] - 2 * dim)
        if new_gates:
            zeros = value.new_zeros((new_gates, *value.shape[1:]))
            out[key] = torch.cat([value[:-1], zeros, value[-1:]])
    return out
