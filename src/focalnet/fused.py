"""Fused CPU inference path for a FocalNet block, on oneDNN's fused kernels.

The block's arithmetic is unchanged; what changes is how many passes it makes over memory:
* `projection_in` runs as separate query / context / gate products, so each output is a
  contiguous channels-last tensor (the odd-width 2C+L+1 product is also slow in MKL);
* every depthwise convolution carries its GELU, every gate multiply-add is one `addcmul`;
* `h(ctx) * q` is one product with a multiply epilogue, `x + proj(..)` and `x + fc2(..)` are
  products with an add epilogue, `fc1` carries its GELU;
* LayerScale and the modulator normalisation are folded into the weights they multiply.

Used automatically when nothing needs gradients, the tensors are fp32 or bf16 on the CPU, oneDNN
runs the kernels in that dtype on this CPU, and the block is big enough for fusion to pay
(`_MIN_FUSED_WORK`). The block is one custom operator, `torch.ops.focalnet.fused_block` (a pure
function of its input and weights, with a shape-only fake kernel), so `torch.compile` keeps it
whole and compiles what lies around it, where tracing the oneDNN calls would fall back to the
slower plain path. `torch.export` (and the ONNX export built on it) traces the plain path: an
exported graph holds only standard operators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .layers import FocalNetBlock

_ONEDNN = torch.ops.mkldnn


def _runs_fused_kernels(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run the fused kernels used here in `dtype`: not every build has
    them, and oneDNN has no bf16 kernels on CPUs without AVX-512 (or AVX2-VNNI-2), e.g. under
    ONEDNN_MAX_CPU_ISA=AVX2."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            x, w = torch.ones(1, 2, 2, 4, dtype=dtype), torch.ones(4, 4, dtype=dtype)
            _ONEDNN._linear_pointwise(x, w, None, "gelu", [], "none")
            _ONEDNN._linear_pointwise.binary(x, x, w, None, "add")
            conv = torch.ones(4, 1, 3, 3, dtype=dtype)
            _ONEDNN._convolution_pointwise(
                x.permute(0, 3, 1, 2), conv, None, [1, 1], [1, 1], [1, 1], 4, "gelu", [], "none"
            )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


_FUSED_DTYPES = frozenset(dtype for dtype in (torch.float32, torch.bfloat16) if _runs_fused_kernels(dtype))
_enabled = True
# Fusing pays once a block has enough arithmetic. Below this many multiply-adds in one C x C
# product (tokens x C^2), the fixed cost of each oneDNN call and of the operator's dispatch
# outweighs what fusion saves: small models and inputs ran 10-40% faster plain (batch 1, 2 vCPUs).
# FocalNet-T's blocks at 224 px, batch 1, have 29M.
_MIN_FUSED_WORK = 2**24


@contextlib.contextmanager
def flags(enabled: bool) -> Iterator[None]:
    """Turn the fused path on or off inside a `with` block (like `torch.backends.mkldnn.flags`), e.g.
    to time or check the plain path that CUDA, `torch.export` and ONNX run."""
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def fused_path_available(x: torch.Tensor) -> bool:
    """Whether the fused kernels apply to this channels-last input (they have no autograd and ignore
    autocast) and pay for themselves at its size."""
    return (
        _enabled
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in _FUSED_DTYPES
        and not torch.is_autocast_enabled("cpu")
        and x.numel() * x.shape[-1] >= _MIN_FUSED_WORK
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


class BlockSpec(NamedTuple):
    """What a block's weights do not say: its layout switches, activation and LayerNorm epsilon."""

    kernel_sizes: list[int]
    use_post_layernorm: bool
    modulation_layernorm: bool
    normalize_modulator: bool
    layerscale: bool
    activation: str
    eps: float


Pair = tuple[torch.Tensor, torch.Tensor]


class BlockWeights(NamedTuple):
    """A block's weights (weight, bias pairs), flattened to one tensor list for the custom operator."""

    norm1: Pair
    projection_in: Pair
    focal: list[torch.Tensor]
    projection_context: Pair  # weight as a [C, C] matrix
    modulation_norm: Pair | None
    projection_out: Pair
    gamma_1: torch.Tensor | None
    norm2: Pair
    fc1: Pair
    fc2: Pair
    gamma_2: torch.Tensor | None

    def flatten(self) -> list[torch.Tensor]:
        """The tensors in `unflatten`'s order; the optional ones only when present."""
        layerscale = [self.gamma_1, self.gamma_2] if self.gamma_1 is not None else []
        return [
            *self.norm1,
            *self.projection_in,
            *self.focal,
            *self.projection_context,
            *(self.modulation_norm or ()),
            *self.projection_out,
            *layerscale,
            *self.norm2,
            *self.fc1,
            *self.fc2,
        ]

    @classmethod
    def unflatten(cls, tensors: list[torch.Tensor], spec: BlockSpec) -> BlockWeights:
        rest = iter(tensors)

        def take(count: int) -> tuple[torch.Tensor, ...]:
            return tuple(next(rest) for _ in range(count))

        norm1, projection_in = take(2), take(2)
        focal, projection_context = list(take(len(spec.kernel_sizes))), take(2)
        modulation_norm = take(2) if spec.modulation_layernorm else None
        projection_out = take(2)
        gamma_1, gamma_2 = take(2) if spec.layerscale else (None, None)
        norm2, fc1, fc2 = take(2), take(2), take(2)
        return cls(
            norm1,
            projection_in,
            focal,
            projection_context,
            modulation_norm,
            projection_out,
            gamma_1,
            norm2,
            fc1,
            fc2,
            gamma_2,
        )


def block_parts(block: FocalNetBlock) -> tuple[BlockWeights, BlockSpec]:
    """The weights and layout of a (float, unquantised) block, as the fused path reads them."""
    modulation, mlp = block.modulation, block.mlp

    def pair(layer: torch.nn.Module) -> Pair:
        return layer.weight, layer.bias

    context = modulation.projection_context
    weights = BlockWeights(
        norm1=pair(block.norm1),
        projection_in=pair(modulation.projection_in),
        focal=[focal_layer[0].weight for focal_layer in modulation.focal_layers],
        projection_context=(context.weight.flatten(1), context.bias),
        modulation_norm=pair(modulation.layernorm) if modulation.layernorm is not None else None,
        projection_out=pair(modulation.projection_out),
        gamma_1=block.gamma_1,
        norm2=pair(block.norm2),
        fc1=pair(mlp.fc1),
        fc2=pair(mlp.fc2),
        gamma_2=block.gamma_2,
    )
    spec = BlockSpec(
        kernel_sizes=list(modulation.kernel_sizes),
        use_post_layernorm=block.use_post_layernorm,
        modulation_layernorm=modulation.layernorm is not None,
        normalize_modulator=modulation.normalize_modulator,
        layerscale=block.gamma_1 is not None,
        activation=mlp.activation_name,
        eps=block.norm1.eps,
    )
    return weights, spec


def fused_block_forward(block: FocalNetBlock, x: torch.Tensor) -> torch.Tensor:
    """The block on channels-last `x`, as `FocalNetBlock.forward` computes it, in one operator call."""
    weights, spec = block_parts(block)
    return torch.ops.focalnet.fused_block(x, weights.flatten(), *spec)


@torch.library.custom_op("focalnet::fused_block", mutates_args=())
def _fused_block_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    kernel_sizes: list[int],
    use_post_layernorm: bool,
    modulation_layernorm: bool,
    normalize_modulator: bool,
    layerscale: bool,
    activation: str,
    eps: float,
) -> torch.Tensor:
    spec = BlockSpec(
        kernel_sizes, use_post_layernorm, modulation_layernorm, normalize_modulator, layerscale, activation, eps
    )
    return _chunked_block(x, BlockWeights.unflatten(weights, spec), spec)


@_fused_block_op.register_fake
def _(x: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


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


def _scaled(layer: Pair, gamma: torch.Tensor | None) -> Pair:
    """Weights of `gamma * layer(x)`."""
    weight, bias = layer
    if gamma is None:
        return weight, bias
    return weight * gamma[:, None], bias * gamma


def _layer_norm(x: torch.Tensor, norm: Pair, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], norm[0], norm[1], eps)


def _context(normed: torch.Tensor, weights: BlockWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, aggregated context) of the modulation, both channels-last and contiguous."""
    dim, levels = normed.shape[-1], len(weights.focal)
    weight, bias = weights.projection_in
    query, ctx, gates = (
        _linear(normed, weight[rows], bias[rows]) for rows in (slice(0, dim), slice(dim, 2 * dim), slice(2 * dim, None))
    )
    ctx, gates = ctx.permute(0, 3, 1, 2), gates.permute(0, 3, 1, 2)
    ctx_all = None
    for level, kernel in enumerate(weights.focal):
        pad = [kernel.shape[-1] // 2] * 2
        ctx = _ONEDNN._convolution_pointwise(ctx, kernel, None, pad, [1, 1], [1, 1], dim, "gelu", [], "none")
        gate = gates[:, level : level + 1]
        ctx_all = ctx * gate if ctx_all is None else torch.addcmul(ctx_all, ctx, gate)
    ctx_global = F.gelu(ctx.mean(dim=(2, 3), keepdim=True))
    ctx_all = torch.addcmul(ctx_all, ctx_global, gates[:, levels:])
    return query, ctx_all.permute(0, 2, 3, 1)


def _modulated(normed: torch.Tensor, weights: BlockWeights, spec: BlockSpec) -> torch.Tensor:
    """q * h(ctx_all), LayerNorm-ed when the modulation has its post-LN (input to projection_out)."""
    query, ctx_all = _context(normed, weights)
    weight, bias = weights.projection_context
    if spec.normalize_modulator:
        weight = weight / (len(weights.focal) + 1)
    if weights.modulation_norm is None:
        return _linear_then(ctx_all, query, weight, bias, "mul")
    return _layer_norm(query * _linear(ctx_all, weight, bias), weights.modulation_norm, spec.eps)


# fp32 products with a short inner dimension (stage 1: 96 channels) lose half their speed
# once a tensor of (batch x height x width) rows outgrows the cache; below this many rows
# they do not. bf16 products are not affected.
_FP32_ROWS_PER_CHUNK = 6272


def _chunked_block(x: torch.Tensor, weights: BlockWeights, spec: BlockSpec) -> torch.Tensor:
    """`_fused_block` over groups of whole images where fp32 rows would outgrow the cache."""
    batch, height, width, _ = x.shape
    images_per_chunk = max(1, _FP32_ROWS_PER_CHUNK // (height * width))
    if x.dtype == torch.float32 and batch > images_per_chunk and batch * height * width > 2 * _FP32_ROWS_PER_CHUNK:
        return torch.cat([_fused_block(chunk, weights, spec) for chunk in x.split(images_per_chunk)])
    return _fused_block(x, weights, spec)


def _fused_block(x: torch.Tensor, weights: BlockWeights, spec: BlockSpec) -> torch.Tensor:
    x = x.contiguous()
    if not spec.use_post_layernorm:  # pre-norm: both residual adds ride on the last product
        modulated = _modulated(_layer_norm(x, weights.norm1, spec.eps), weights, spec)
        x = _linear_then(modulated, x, *_scaled(weights.projection_out, weights.gamma_1), "add")
        hidden = _linear(_layer_norm(x, weights.norm2, spec.eps), *weights.fc1, spec.activation)
        return _linear_then(hidden, x, *_scaled(weights.fc2, weights.gamma_2), "add")
    branch = _layer_norm(_linear(_modulated(x, weights, spec), *weights.projection_out), weights.norm1, spec.eps)
    x = x + branch if weights.gamma_1 is None else torch.addcmul(x, weights.gamma_1, branch)
    hidden = _linear(x, *weights.fc1, spec.activation)
    branch = _layer_norm(_linear(hidden, *weights.fc2), weights.norm2, spec.eps)
    return x + branch if weights.gamma_2 is None else torch.addcmul(x, weights.gamma_2, branch)
