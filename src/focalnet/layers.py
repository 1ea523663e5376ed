"""Building blocks of FocalNet: focal modulation, the block, the stem and the downsampler.

Tokens travel between blocks channels-last, as (batch, height, width, channels), so every
Linear runs as one matrix multiply and the depthwise convolutions read the same memory
through an NCHW view. Module and parameter names follow `transformers` exactly, so that a
state dict moves between the two unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import FocalNetConfig
from .fused import fused_block_forward, fused_path_available


def make_activation(name: str) -> nn.Module:
    """The MLP activation named by `config.hidden_act` (HF spellings)."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported activation {name!r}")


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A Linear over the channels of channels-last `x` (B, H, W, C): a 1x1 convolution, which is what it
    runs as (over an NCHW view of the same memory) where that is faster or has the better defaults.

    * CPU with gradients: oneDNN differentiates the convolution 15-20% faster than MKL's matmuls.
    * CUDA in fp32: cuDNN's convolutions use TF32 tensor cores unless `torch.backends.cudnn.allow_tf32`
      is turned off (PyTorch's default, and what timm's 1x1-convolution FocalNet runs), where a fp32
      matmul stays on the slower full-precision path by default.
    Elsewhere (CPU inference, autocast, int8) it is `F.linear`. Weights keep the Linear shape [out, in].
    """
    if _as_pointwise_convolution(x):
        return F.conv2d(x.permute(0, 3, 1, 2), weight[:, :, None, None], bias).permute(0, 2, 3, 1)
    return F.linear(x, weight, bias)


def _as_pointwise_convolution(x: torch.Tensor) -> bool:
    if x.ndim != 4:
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.float32 and not torch.is_autocast_enabled("cuda")
    return x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()


def apply_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for a Linear-like layer, through `channel_linear` when it is a plain float Linear."""
    if type(layer) is nn.Linear:
        return channel_linear(x, layer.weight, layer.bias)
    return layer(x)


def pad_to_multiple(pixel_values: torch.Tensor, multiple: tuple[int, int]) -> torch.Tensor:
    """Zero-pad an NCHW tensor on the right and bottom to a multiple of `multiple` (as HF does)."""
    height, width = pixel_values.shape[-2:]
    pad_h = -height % multiple[0]
    pad_w = -width % multiple[1]
    # Under torch.compile, pad unconditionally: testing the amounts would guard on the input size
    # and recompile for every new one. Eagerly, skip the copy when nothing needs padding.
    if torch.compiler.is_compiling() or pad_h or pad_w:
        pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
    return pixel_values


class PatchEmbeddings(nn.Module):
    """Strided convolution that cuts the input into patches: the stem, or a between-stage downsample.

    Input NCHW, output channels-last (B, H', W', C'). The downsample variant carries its own
    LayerNorm (`norm`); the stem's LayerNorm lives in `FocalNetEmbeddings`, as in HF.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch_size: tuple[int, int],
        overlapping: bool,
        is_stem: bool,
        layer_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        if overlapping:  # "conv embed": 7x7/4 for the stem, 3x3/2 between stages
            kernel, stride, padding = (7, 4, 2) if is_stem else (3, 2, 1)
            self.projection = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
        else:
            self.projection = nn.Conv2d(in_channels, out_channels, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(out_channels, eps=layer_norm_eps) if layer_norm_eps is not None else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projection(pad_to_multiple(pixel_values, self.patch_size)).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class FocalModulation(nn.Module):
    """Focal modulation (paper eq. 4-6) on channels-last tokens (B, H, W, C).

    Parameter names and shapes are HF's: `projection_context` keeps its 1x1-conv weight
    [C, C, 1, 1] in the state dict but runs as a matrix multiply over the channel axis.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        use_post_layernorm: bool = False,
        normalize_modulator: bool = False,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.projection_in = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.focal_layers = nn.ModuleList()
        self.kernel_sizes = [focal_window + 2 * level for level in range(focal_level)]
        for kernel in self.kernel_sizes:
            conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))
        self.activation = nn.GELU()
        self.projection_context = nn.Conv2d(dim, dim, kernel_size=1)
        self.projection_out = nn.Linear(dim, dim)
        self.projection_dropout = nn.Dropout(dropout)
        self.layernorm = nn.LayerNorm(dim, eps=layer_norm_eps) if use_post_layernorm else None

    def forward(
        self, x: torch.Tensor, return_modulator: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return (output, modulator, gates); the last two (NCHW) only when `return_modulator`."""
        levels = self.focal_level
        # 1. one linear layer yields the query, the context and L+1 gates (raw, no squashing);
        #    run as three products so each result is a contiguous channels-last tensor
        query, ctx, gates = self.project_in(x)
        ctx = ctx.permute(0, 3, 1, 2)  # NCHW view of channels-last memory, no copy
        gates = gates.permute(0, 3, 1, 2)
        # 2. hierarchical contextualisation: each depthwise conv + GELU sees the previous level
        ctx_all = None
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = focal_layer(ctx)
            gate = gates[:, level : level + 1]
            ctx_all = ctx * gate if ctx_all is None else torch.addcmul(ctx_all, ctx, gate)
        # 3. global context: GELU of the spatial mean of the last level, with the last gate
        ctx_global = self.activation(ctx.mean(dim=(2, 3), keepdim=True))
        ctx_all = torch.addcmul(ctx_all, ctx_global, gates[:, levels:])
        if self.normalize_modulator:
            ctx_all = ctx_all / (levels + 1)
        # 4. modulator h(ctx_all): a 1x1 projection over channels
        modulator = channel_linear(
            ctx_all.permute(0, 2, 3, 1), self.projection_context.weight.flatten(1), self.projection_context.bias
        )
        # 5. element-wise modulation of the query, optional LayerNorm, output projection
        out = query * modulator
        if self.layernorm is not None:
            out = self.layernorm(out)
        out = self.projection_dropout(apply_linear(self.projection_out, out))
        if return_modulator:
            return out, modulator.permute(0, 3, 1, 2), gates
        return out, None, None

    def project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, context and gates as three products, so each is contiguous; one product and a
        split for quantised layers."""
        dim = self.dim
        if type(self.projection_in) is not nn.Linear:
            return self.projection_in(x).split([dim, dim, self.focal_level + 1], dim=-1)
        weight, bias = self.projection_in.weight, self.projection_in.bias
        return tuple(
            channel_linear(x, weight[rows], bias[rows])
            for rows in (slice(0, dim), slice(dim, 2 * dim), slice(2 * dim, None))
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_sizes={self.kernel_sizes}, normalize_modulator={self.normalize_modulator}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.activation_name = activation
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation = make_activation(activation)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop(self.activation(apply_linear(self.fc1, x)))
        return self.drop(apply_linear(self.fc2, hidden))


class FocalNetBlock(nn.Module):
    """Modulation and MLP, each a residual branch with LayerNorm, LayerScale and DropPath.

    Pre-norm by default; `use_post_layernorm` moves both norms after their branch ("res-post-norm").
    """

    def __init__(self, config: FocalNetConfig, stage: int, dim: int, drop_path_rate: float) -> None:
        super().__init__()
        self.use_post_layernorm = config.use_post_layernorm
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.modulation = FocalModulation(
            dim,
            focal_level=config.focal_levels[stage],
            focal_window=config.focal_windows[stage],
            use_post_layernorm=config.use_post_layernorm_in_modulation,
            normalize_modulator=config.normalize_modulator,
            dropout=config.hidden_dropout_prob,
            layer_norm_eps=config.layer_norm_eps,
        )
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), config.hidden_act, config.hidden_dropout_prob)
        if config.use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(config.layerscale_value)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(config.layerscale_value)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(
        self, x: torch.Tensor, return_modulator: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not (self.training or return_modulator) and self._fusable() and fused_path_available(x):
            return fused_block_forward(self, x), None, None
        x, modulator, gates = self.mix_tokens(x, return_modulator)
        return self.mix_channels(x), modulator, gates

    def mix_tokens(
        self, x: torch.Tensor, return_modulator: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The focal-modulation residual branch (gradient checkpointing recomputes it on its own)."""
        post = self.use_post_layernorm
        branch, modulator, gates = self.modulation(x if post else self.norm1(x), return_modulator)
        x = x + self.drop_path(_scale(self.norm1(branch) if post else branch, self.gamma_1))
        return x, modulator, gates

    def mix_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP residual branch."""
        branch = self.norm2(self.mlp(x)) if self.use_post_layernorm else self.mlp(self.norm2(x))
        return x + self.drop_path(_scale(branch, self.gamma_2))

    def _fusable(self) -> bool:
        """The fused kernels need the float Linear layers (not, e.g., int8-quantised ones)."""
        linears = (self.modulation.projection_in, self.modulation.projection_out, self.mlp.fc1, self.mlp.fc2)
        return all(type(layer) is nn.Linear for layer in linears)


def _scale(x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    return x if gamma is None else x * gamma
