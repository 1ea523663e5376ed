"""Fused CPU inference path for a FocalNet block, on oneDNN's fused kernels.

The block's arithmetic is unchanged; what changes is how many passes it makes over memory:
* `projection_in` runs as separate query / context / gate products, so each output is a
  contiguous channels-last tensor (the odd-width 2C+L+1 product is also slow in MKL);
* every depthwise convolution carries its GELU, every gate multiply-add is one `addcmul`;
* `h(ctx) * q` is one product with a multiply epilogue, `x + proj(..)` and `x + fc2(..)` are
  products with an add epilogue, `fc1` carries its GELU;
* LayerScale and the modulator normalisation are folded into the weights they multiply.

Used automatically when nothing needs gradients, the tensors are fp32 or bf16 on the CPU, and
oneDNN is available; `torch.compile` traces the plain path, which inductor fuses itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .layers import FocalModulation, FocalNetBlock

_ONEDNN = torch.ops.mkldnn


def _probe_onednn() -> bool:
    """Whether this torch build runs the fused kernels used here (not every CPU build has them)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            x, w = torch.ones(1, 2, 2, 4), torch.ones(4, 4)
            _ONEDNN._linear_pointwise(x, w, None, "gelu", [], "none")
            _ONEDNN._linear_pointwise.binary(x, x, w, None, "add")
            conv = torch.ones(4, 1, 3, 3)
            _ONEDNN._convolution_pointwise(
                x.permute(0, 3, 1, 2), conv, None, [1, 1], [1, 1], [1, 1], 4, "gelu", [], "none"
            )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


_ONEDNN_AVAILABLE = _probe_onednn()


def fused_path_available(x: torch.Tensor) -> bool:
    """Whether the fused kernels apply to this input (they have no autograd and ignore autocast)."""
    return (
        not torch.compiler.is_compiling()
        and _ONEDNN_AVAILABLE
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_autocast_enabled("cpu")
    )


# MLP activations (config.hidden_act) as oneDNN epilogues: (attr, algorithm)
_EPILOGUES = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
    "swish": ("swish", ""),
}


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    attr, algorithm = _EPILOGUES[activation] if activation else ("none", "")
    return _ONEDNN._linear_pointwise(x, weight, bias, attr, [], algorithm)


def _linear_then(
    x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: str
) -> torch.Tensor:
    """`linear(x) <op> other` in one kernel; op is "add" or "mul"."""
    return _ONEDNN._linear_pointwise.binary(x, other, weight, bias, op)


def _scaled(layer: torch.nn.Linear, gamma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of `gamma * layer(x)`."""
    if gamma is None:
        return layer.weight, layer.bias
    return layer.weight * gamma[:, None], layer.bias * gamma


def _context(modulation: FocalModulation, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, aggregated context) of the modulation, both channels-last and contiguous."""
    dim, levels = modulation.dim, modulation.focal_level
    query, ctx, gates = modulation.project_in(normed, product=_linear)
    ctx, gates = ctx.permute(0, 3, 1, 2), gates.permute(0, 3, 1, 2)
    ctx_all = None
    for level, focal_layer in enumerate(modulation.focal_layers):
        conv = focal_layer[0]
        pad = conv.padding
        ctx = _ONEDNN._convolution_pointwise(ctx, conv.weight, None, pad, [1, 1], [1, 1], dim, "gelu", [], "none")
        gate = gates[:, level : level + 1]
        ctx_all = ctx * gate if ctx_all is None else torch.addcmul(ctx_all, ctx, gate)
    ctx_global = F.gelu(ctx.mean(dim=(2, 3), keepdim=True))
    ctx_all = torch.addcmul(ctx_all, ctx_global, gates[:, levels:])
    return query, ctx_all.permute(0, 2, 3, 1)


def _modulated(modulation: FocalModulation, normed: torch.Tensor) -> torch.Tensor:
    """q * h(ctx_all), LayerNorm-ed when the modulation has its post-LN (input to projection_out)."""
    query, ctx_all = _context(modulation, normed)
    weight = modulation.projection_context.weight.flatten(1)
    if modulation.normalize_modulator:
        weight = weight / (modulation.focal_level + 1)
    if modulation.layernorm is None:
        return _linear_then(ctx_all, query, weight, modulation.projection_context.bias, "mul")
    return modulation.layernorm(query * _linear(ctx_all, weight, modulation.projection_context.bias))


# fp32 products with a short inner dimension (stage 1: 96 channels) lose half their speed
# once a tensor of (batch x height x width) rows outgrows the cache; below this many rows
# they do not. bf16 products are not affected.
_FP32_ROWS_PER_CHUNK = 6272


def fused_block_forward(block: FocalNetBlock, x: torch.Tensor) -> torch.Tensor:
    """The block on channels-last `x`, as `FocalNetBlock.forward` computes it."""
    batch, height, width, _ = x.shape
    images_per_chunk = max(1, _FP32_ROWS_PER_CHUNK // (height * width))
    if x.dtype == torch.float32 and batch > images_per_chunk and batch * height * width > 2 * _FP32_ROWS_PER_CHUNK:
        return torch.cat([_fused_block(block, chunk) for chunk in x.split(images_per_chunk)])
    return _fused_block(block, x)


def _fused_block(block: FocalNetBlock, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    modulation = block.modulation
    mlp, activation = block.mlp, block.mlp.activation_name
    if not block.use_post_layernorm:  # pre-norm: both residual adds ride on the last product
        modulated = _modulated(modulation, block.norm1(x))
        x = _linear_then(modulated, x, *_scaled(modulation.projection_out, block.gamma_1), "add")
        hidden = _linear(block.norm2(x), mlp.fc1.weight, mlp.fc1.bias, activation)
        return _linear_then(hidden, x, *_scaled(mlp.fc2, block.gamma_2), "add")
    projection = modulation.projection_out
    branch = block.norm1(_linear(_modulated(modulation, x), projection.weight, projection.bias))
    x = x + branch if block.gamma_1 is None else torch.addcmul(x, block.gamma_1, branch)
    hidden = _linear(x, mlp.fc1.weight, mlp.fc1.bias, activation)
    branch = block.norm2(_linear(hidden, mlp.fc2.weight, mlp.fc2.bias))
    return x + branch if block.gamma_2 is None else torch.addcmul(x, block.gamma_2, branch)
