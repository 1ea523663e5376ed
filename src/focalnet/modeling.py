"""FocalNet models: the encoder and its classification, masked-image-modeling and backbone heads.

Public classes and their forward signatures mirror `transformers`; state-dict keys are HF's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration import FocalNetConfig
from .layers import FocalNetBlock, PatchEmbeddings
from .losses import classification_loss, masked_image_modeling_loss
from .outputs import (
    BackboneOutput,
    FocalNetImageClassifierOutput,
    FocalNetMaskedImageModelingOutput,
    FocalNetModelOutput,
)

Tensors = tuple[torch.Tensor, ...]


def check_pixel_values(pixel_values: Any, num_channels: int) -> None:
    """Reject inputs the model cannot mean to receive, with the fix in the message."""
    if pixel_values is None:
        raise ValueError("pixel_values is required: a float tensor of shape (batch, channels, height, width)")
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; "
            "FocalNetImageProcessor turns images into tensors"
        )
    if pixel_values.ndim != 4:
        hint = " (add the batch dimension with pixel_values.unsqueeze(0))" if pixel_values.ndim == 3 else ""
        raise ValueError(
            f"pixel_values must be 4-D (batch, channels, height, width), got a {pixel_values.ndim}-D tensor "
            f"of shape {tuple(pixel_values.shape)}{hint}"
        )
    if not pixel_values.dtype.is_floating_point:
        raise TypeError(
            f"pixel_values must be a floating-point tensor, got {pixel_values.dtype}; "
            "convert with pixel_values.float() / 255 and normalise (FocalNetImageProcessor does this)"
        )
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError("pixel_values holds an empty batch (batch size 0); pass at least one image")
    if channels != num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects config.num_channels={num_channels}; "
            "convert the images (e.g. to RGB) or build the model with a matching num_channels"
        )
    if height == 0 or width == 0:
        raise ValueError(f"pixel_values has an empty spatial size {height}x{width}")


class EncoderResult(NamedTuple):
    """What the encoder hands to the heads; tensors are channels-last (B, H, W, C)."""

    last: torch.Tensor
    hidden_states: Tensors | None  # embedding output, then each stage after its downsample (HF)
    stage_outputs: Tensors | None  # each stage's output before its downsample
    modulators: Tensors | None
    gates: Tensors | None


class FocalNetEmbeddings(nn.Module):
    """Stem (patchify convolution + LayerNorm), with the SimMIM mask token when asked for."""

    def __init__(self, config: FocalNetConfig, use_mask_token: bool = False) -> None:
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(
            config.num_channels,
            config.embed_dim,
            config.patch_size_2d,
            overlapping=config.use_conv_embed,
            is_stem=True,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if use_mask_token else None
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.norm(self.patch_embeddings(pixel_values))
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError(
                    "bool_masked_pos was given but this model has no mask token; "
                    "use FocalNetForMaskedImageModeling or FocalNetModel(config, use_mask_token=True)"
                )
            batch, height, width, _ = embeddings.shape
            mask = _mask_grid(bool_masked_pos, batch, height, width).unsqueeze(-1).to(embeddings.dtype)
            embeddings = embeddings * (1.0 - mask) + self.mask_token.view(1, 1, 1, -1) * mask
        return self.dropout(embeddings)


def _mask_grid(bool_masked_pos: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Accept masks as (B, H*W) like HF or as (B, H, W); return (B, H, W)."""
    expected = (batch, height * width)
    if tuple(bool_masked_pos.shape) not in (expected, (batch, height, width)):
        raise ValueError(
            f"bool_masked_pos must have shape {expected} (one flag per stem patch, {height}x{width} "
            f"for this input) or ({batch}, {height}, {width}), got {tuple(bool_masked_pos.shape)}"
        )
    return bool_masked_pos.reshape(batch, height, width)


class FocalNetStage(nn.Module):
    """The blocks of one stage, then (except for the last stage) a 2x downsample."""

    def __init__(self, config: FocalNetConfig, index: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        dim = config.stage_widths[index]
        self.layers = nn.ModuleList(FocalNetBlock(config, index, dim, rate) for rate in drop_path_rates)
        if index < config.num_stages - 1:
            self.downsample = PatchEmbeddings(
                dim,
                config.stage_widths[index + 1],
                (2, 2),
                overlapping=config.use_conv_embed,
                is_stem=False,
                layer_norm_eps=config.layer_norm_eps,
            )
        else:
            self.downsample = None


class FocalNetEncoder(nn.Module):
    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:i]) for i in range(config.num_stages)]
        self.stages = nn.ModuleList(
            FocalNetStage(config, i, rates[start : start + depth])
            for i, (start, depth) in enumerate(zip(starts, config.depths, strict=True))
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        output_hidden_states: bool = False,
        output_stage_outputs: bool = False,
        output_modulators: bool = False,
        num_stages: int | None = None,
    ) -> EncoderResult:
        """Run the first `num_stages` stages (all by default) on channels-last embeddings."""
        hidden_states = [x] if output_hidden_states else None
        stage_outputs = [] if output_stage_outputs else None
        modulators = [] if output_modulators else None
        gates = [] if output_modulators else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages[:num_stages]:
            for block in stage.layers:
                if checkpointing:  # each residual branch apart: half the recomputation peak
                    x, modulator, gate = checkpoint(block.mix_tokens, x, output_modulators, use_reentrant=False)
                    x = checkpoint(block.mix_channels, x, use_reentrant=False)
                else:
                    x, modulator, gate = block(x, output_modulators)
                if output_modulators:
                    modulators.append(modulator)
                    gates.append(gate)
            if output_stage_outputs:
                stage_outputs.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x.permute(0, 3, 1, 2))
            if output_hidden_states:
                hidden_states.append(x)
        return EncoderResult(x, _tuple(hidden_states), _tuple(stage_outputs), _tuple(modulators), _tuple(gates))


def _tuple(values: list[torch.Tensor] | None) -> Tensors | None:
    return None if values is None else tuple(values)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H*W, C), HF's sequence layout."""
    return x.flatten(1, 2)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class FocalNetPreTrainedModel(nn.Module):
    """Shared plumbing: config, HF-style weight init, gradient checkpointing, save/load."""

    config_class = FocalNetConfig
    base_model_prefix = "focalnet"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__()
        if not isinstance(config, FocalNetConfig):
            raise TypeError(
                f"expected a FocalNetConfig, got {type(config).__name__}; "
                "build one with FocalNetConfig(...) or FocalNetConfig.from_preset(name)"
            )
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF's scheme: N(0, initializer_range) weights, zero biases, unit LayerNorms, zero mask token."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, FocalNetEmbeddings) and module.mask_token is not None:
            module.mask_token.zero_()
        elif isinstance(module, FocalNetBlock) and module.gamma_1 is not None:
            module.gamma_1.fill_(self.config.layerscale_value)
            module.gamma_2.fill_(self.config.layerscale_value)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        if gradient_checkpointing_kwargs:
            raise ValueError("gradient_checkpointing_kwargs are not supported; checkpointing is per block")
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, FocalNetEncoder))

    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, FocalNetEncoder):
                module.gradient_checkpointing = enabled

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fuse_for_inference(self) -> FocalNetPreTrainedModel:
        """Fold LayerScale, modulator normalisation and LayerNorm affines into weights (see `focalnet.inference`)."""
        from .inference import fuse_for_inference

        return fuse_for_inference(self)

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write `config.json` and `model.safetensors` (HF layout), each atomically."""
        from .checkpoints import save_pretrained

        if getattr(self, "is_fused", False):
            raise ValueError("this model was fused for inference and lost the HF layout; save it before fusing")
        save_pretrained(self, save_directory, safe_serialization=safe_serialization)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> FocalNetPreTrainedModel:
        """Load a checkpoint saved by this library or by `transformers` (see `focalnet.checkpoints`)."""
        from .checkpoints import from_pretrained

        return from_pretrained(cls, source, **kwargs)

    @classmethod
    def config_for_weights(cls, config: FocalNetConfig, state: dict[str, torch.Tensor]) -> FocalNetConfig:
        """The config this class builds for HF-layout `state` (heads that the weights lack may adapt it)."""
        return config

    def _resolve(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        as_dict = self.config.return_dict if return_dict is None else return_dict
        return hidden, as_dict


class FocalNetModel(FocalNetPreTrainedModel):
    """The bare encoder: stem, stages, final LayerNorm and (optionally) mean pooling."""

    def __init__(self, config: FocalNetConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        self.num_stages = config.num_stages
        self.num_features = config.num_features
        self.add_pooling_layer = add_pooling_layer
        self.embeddings = FocalNetEmbeddings(config, use_mask_token=use_mask_token)
        self.encoder = FocalNetEncoder(config)
        self.layernorm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_modulators: bool = False,
    ) -> FocalNetModelOutput | tuple:
        output_hidden_states, return_dict = self._resolve(output_hidden_states, return_dict)
        output = self._forward(pixel_values, bool_masked_pos, output_hidden_states, output_modulators)
        return output if return_dict else output.to_tuple()

    def _forward(
        self,
        pixel_values: torch.Tensor | None,
        bool_masked_pos: torch.Tensor | None,
        output_hidden_states: bool,
        output_modulators: bool,
    ) -> FocalNetModelOutput:
        check_pixel_values(pixel_values, self.config.num_channels)
        embeddings = self.embeddings(pixel_values, bool_masked_pos)
        encoded = self.encoder(
            embeddings, output_hidden_states=output_hidden_states, output_modulators=output_modulators
        )
        sequence = _tokens(self.layernorm(encoded.last))
        hidden = encoded.hidden_states
        return FocalNetModelOutput(
            last_hidden_state=sequence,
            pooler_output=sequence.mean(dim=1) if self.add_pooling_layer else None,
            hidden_states=None if hidden is None else tuple(_tokens(h) for h in hidden),
            reshaped_hidden_states=None if hidden is None else tuple(_nchw(h) for h in hidden),
            modulators=encoded.modulators,
            gates=encoded.gates,
        )


def _encoder_extras(outputs: FocalNetModelOutput) -> dict[str, Tensors | None]:
    """The optional encoder outputs every head passes through unchanged."""
    return {
        "hidden_states": outputs.hidden_states,
        "reshaped_hidden_states": outputs.reshaped_hidden_states,
        "modulators": outputs.modulators,
        "gates": outputs.gates,
    }


class FocalNetForImageClassification(FocalNetPreTrainedModel):
    """Encoder + Linear classifier on the pooled output (`Identity` when `num_labels` is 0)."""

    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.focalnet = FocalNetModel(config)
        num_features = self.focalnet.num_features
        self.classifier = nn.Linear(num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_modulators: bool = False,
    ) -> FocalNetImageClassifierOutput | tuple:
        output_hidden_states, return_dict = self._resolve(output_hidden_states, return_dict)
        outputs = self.focalnet._forward(pixel_values, None, output_hidden_states, output_modulators)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            if self.config.num_labels == 0:
                raise ValueError("labels were given but the model has no classifier (num_labels=0)")
            loss = classification_loss(logits, labels, self.config.problem_type)
        output = FocalNetImageClassifierOutput(loss=loss, logits=logits, **_encoder_extras(outputs))
        return output if return_dict else output.to_tuple()


class FocalNetForMaskedImageModeling(FocalNetPreTrainedModel):
    """SimMIM: masked stem patches become a learned token; a 1x1 conv + PixelShuffle rebuilds the pixels.

    Works at any input size, square or not: the reconstruction is cropped to the input and the
    mask is laid on the stem's patch grid of this input, not on `config.image_size`.
    """

    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__(config)
        if config.encoder_stride != config.total_stride:
            raise ValueError(
                f"encoder_stride={config.encoder_stride} does not match the encoder's total stride "
                f"{config.total_stride} (patch_size * 2**(stages-1)); set encoder_stride={config.total_stride}"
            )
        self.focalnet = FocalNetModel(config, add_pooling_layer=False, use_mask_token=True)
        out_channels = config.encoder_stride**2 * config.num_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(config.num_features, out_channels, kernel_size=1),
            nn.PixelShuffle(config.encoder_stride),
        )
        self.post_init()

    @classmethod
    def config_for_weights(cls, config: FocalNetConfig, state: dict[str, torch.Tensor]) -> FocalNetConfig:
        """A new decoder (weights without one, e.g. a classifier's) fits the encoder's total stride,
        whatever `encoder_stride` the source's config carried."""
        if "decoder.0.weight" in state or config.encoder_stride == config.total_stride:
            return config
        return FocalNetConfig.from_dict(config.to_dict(), encoder_stride=config.total_stride)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_modulators: bool = False,
    ) -> FocalNetMaskedImageModelingOutput | tuple:
        output_hidden_states, return_dict = self._resolve(output_hidden_states, return_dict)
        outputs = self.focalnet._forward(pixel_values, bool_masked_pos, output_hidden_states, output_modulators)
        height, width = pixel_values.shape[-2:]
        grid = self._final_grid(height, width)
        features = outputs.last_hidden_state.transpose(1, 2).reshape(-1, self.config.num_features, *grid)
        reconstruction = self.decoder(features)[..., :height, :width]
        loss = None
        if bool_masked_pos is not None:
            loss = masked_image_modeling_loss(
                pixel_values, reconstruction, self.pixel_mask(bool_masked_pos, height, width)
            )
        output = FocalNetMaskedImageModelingOutput(loss=loss, reconstruction=reconstruction, **_encoder_extras(outputs))
        return output if return_dict else output.to_tuple()

    def _final_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid after the last stage: every stride pads up (HF's padding), hence the ceilings."""
        patch_h, patch_w = self.config.patch_size_2d
        height, width = math.ceil(height / patch_h), math.ceil(width / patch_w)
        for _ in range(self.config.num_stages - 1):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        return height, width

    def pixel_mask(self, bool_masked_pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A patch-grid mask ((B, h*w) or (B, h, w)) as the (B, 1, H, W) float pixel mask the loss weighs."""
        patch_h, patch_w = self.config.patch_size_2d
        grid_h, grid_w = math.ceil(height / patch_h), math.ceil(width / patch_w)
        mask = bool_masked_pos.reshape(-1, grid_h, grid_w)
        mask = mask.repeat_interleave(patch_h, 1).repeat_interleave(patch_w, 2)
        return mask[:, None, :height, :width].to(torch.float32)


class FocalNetBackbone(FocalNetPreTrainedModel):
    """Multi-scale feature maps for detection and segmentation heads.

    Unlike `transformers.FocalNetBackbone`, which returns each stage's output AFTER its
    downsample (so "stage3" and "stage4" have the same size) and reports channels from the
    `hidden_sizes` metadata, this returns each stage's output BEFORE downsampling, at strides
    4/8/16/32 with widths C/2C/4C/8C, like timm and the original detection backbone; "stem" is
    the embedding output. `config.use_backbone_layernorm` adds a LayerNorm per output, as the
    original detection code does. Stages after the last requested one are not computed.
    """

    # The encoder's final LayerNorm feeds no output: checkpoints of dense models lack it.
    _keys_to_ignore_on_load_missing = (r"^focalnet\.layernorm\.",)

    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__(config)
        self.focalnet = FocalNetModel(config)
        self.stage_names = config.stage_names
        self.out_features = list(config.out_features)
        self.out_indices = list(config.out_indices)
        widths = [config.embed_dim, *config.stage_widths]
        self.num_features = widths
        self.channels = [widths[i] for i in self.out_indices]
        if config.use_backbone_layernorm:
            self.hidden_states_norms = nn.ModuleDict(
                {
                    name: nn.LayerNorm(widths[i], eps=config.layer_norm_eps)
                    for name, i in zip(self.out_features, self.out_indices, strict=True)
                }
            )
        else:
            self.hidden_states_norms = None
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        output_hidden_states, return_dict = self._resolve(output_hidden_states, return_dict)
        check_pixel_values(pixel_values, self.config.num_channels)
        embeddings = self.focalnet.embeddings(pixel_values)
        last_needed = None if output_hidden_states else max(self.out_indices)
        encoded = self.focalnet.encoder(
            embeddings, output_hidden_states=output_hidden_states, output_stage_outputs=True, num_stages=last_needed
        )
        maps = (embeddings, *encoded.stage_outputs)
        feature_maps = []
        for name, index in zip(self.out_features, self.out_indices, strict=True):
            feature = maps[index]
            if self.hidden_states_norms is not None:
                feature = self.hidden_states_norms[name](feature)
            feature_maps.append(_nchw(feature))
        hidden = None
        if output_hidden_states:
            hidden = tuple(_tokens(h) for h in encoded.hidden_states)
        output = BackboneOutput(feature_maps=tuple(feature_maps), hidden_states=hidden)
        return output if return_dict else output.to_tuple()


def class_for_weights(
    config: FocalNetConfig, keys: Iterable[str], classes: Mapping[str, type[FocalNetPreTrainedModel]]
) -> type[FocalNetPreTrainedModel] | None:
    """The class among `classes` (by name) that the config's `architectures` entry names, else the one
    the weights' heads say (a SimMIM decoder, a classifier); None for weights of neither."""
    for name in config.extra.get("architectures") or []:
        if name in classes:
            return classes[name]
    keys = list(keys)
    if any(key.startswith("decoder.") for key in keys):
        return FocalNetForMaskedImageModeling
    if "classifier.weight" in keys:
        return FocalNetForImageClassification
    return None
