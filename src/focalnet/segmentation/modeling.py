"""`UperNetForSemanticSegmentation`: the paper's segmentation model, UperNet on a FocalNet backbone.

transformers' UperNet cannot build this model: its FocalNet backbone returns post-downsample maps
without norms (SPEC 10). Here the backbone is our `FocalNetBackbone` (each stage before its
downsample, through its own LayerNorm, strides 4-32), the heads have transformers' module and key
names, and the API is transformers' (`config`, `forward(pixel_values, labels)`, `from_pretrained`,
`save_pretrained`, `SemanticSegmenterOutput`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import PICKLE_NAME, SAFETENSORS_NAME, CheckpointError, load_state_dict, save_state_dict
from ..configuration import CONFIG_NAME, FocalNetConfig
from ..dense import dense_backbone, fresh_backbone
from ..formats import mmseg_heads_to_hf
from ..modeling import check_pixel_values
from ..outputs import SemanticSegmenterOutput
from .configuration import DEFAULT_POOL_SCALES, UperNetConfig
from .heads import ConvModule, UperNetFCNHead, UperNetHead

HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")


class UperNetForSemanticSegmentation(nn.Module):
    """UperNet over `FocalNetBackbone`, with an auxiliary FCN head on stage 3 for training.

    `forward` returns logits upsampled (bilinear) to the input size, for any input size; with
    `labels` (B, H, W) also the loss: cross-entropy over the pixels whose label is not
    `config.loss_ignore_index`, plus `auxiliary_loss_weight` times the auxiliary head's.
    """

    config_class = UperNetConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    def __init__(self, config: UperNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UperNetConfig):
            raise TypeError(f"expected an UperNetConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = fresh_backbone(config.backbone_config)
        self.decode_head = UperNetHead(config, config.in_channels)
        self.auxiliary_head = UperNetFCNHead(config, config.in_channels) if config.use_auxiliary_head else None
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None:
                head.apply(self._init_head_weights)

    @torch.no_grad()
    def _init_head_weights(self, module: nn.Module) -> None:
        """mmsegmentation's initialisation: Kaiming (fan-out, ReLU) convolutions, unit BatchNorms,
        classifiers N(0, 0.01); the backbone keeps its own (HF) initialisation."""
        if isinstance(module, ConvModule):
            nn.init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.ones_(module.batch_norm.weight)
            nn.init.zeros_(module.batch_norm.bias)
        elif isinstance(module, (UperNetHead, UperNetFCNHead)):
            nn.init.normal_(module.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(module.classifier.bias)

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        check_pixel_values(pixel_values, config.backbone_config.num_channels)
        if labels is not None:
            self._check_labels(labels, pixel_values)
        outputs = self.backbone(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        size = pixel_values.shape[2:]
        logits = _upsample(self.decode_head(outputs.feature_maps), size)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels)
            if self.auxiliary_head is not None:
                auxiliary = _upsample(self.auxiliary_head(outputs.feature_maps), size)
                loss = loss + config.auxiliary_loss_weight * self._loss(auxiliary, labels)
        output = SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels (0, not NaN, when a crop has none)."""
        ignore = self.config.loss_ignore_index
        total = F.cross_entropy(logits.float(), labels, ignore_index=ignore, reduction="sum")
        return total / (labels != ignore).sum().clamp(min=1)

    def _check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        expected = (pixel_values.shape[0], *pixel_values.shape[2:])
        if labels.shape != expected or labels.dtype.is_floating_point:
            raise ValueError(
                f"labels must be an integer tensor of shape (batch, height, width) = {expected}, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        ignore, count = self.config.loss_ignore_index, self.config.num_labels
        wrong = labels[(labels != ignore) & ((labels < 0) | (labels >= count))]
        if wrong.numel():
            raise ValueError(
                f"labels hold {sorted(set(wrong.unique().tolist()))[:5]}, outside 0..{count - 1} and not the "
                f"ignore index {ignore}; check num_labels or the label maps"
            )

    # ------------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each backbone block's activations in the backward pass instead of storing them."""
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.backbone.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.backbone.is_gradient_checkpointing

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """`config.json` (transformers' UperNet fields) and `model.safetensors`, each written atomically."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"{directory} is a file; save_pretrained needs a directory")
        config = self.config.copy()
        config.extra["architectures"] = [type(self).__name__]
        save_state_dict(self.state_dict(), directory / (SAFETENSORS_NAME if safe_serialization else PICKLE_NAME))
        config.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **config_overrides: Any) -> UperNetForSemanticSegmentation:
        """The model saved in the directory `source` (by `save_pretrained`), strictly, in eval mode.

        Keyword arguments override config fields; a new `num_labels` / `id2label` gives fresh
        classifiers (and says so), any other mismatch between weights and config is an error.
        `source` may also be a checkpoint file of the original segmentation code (mmsegmentation:
        `backbone.*` with `norm0..3`, `decode_head.*`, `auxiliary_head.*`): everything is loaded.
        """
        if Path(source).is_file():
            return cls._from_original(Path(source), **config_overrides)
        config = UperNetConfig.from_pretrained(source, **config_overrides)
        directory = Path(source)
        weights = next((directory / n for n in (SAFETENSORS_NAME, PICKLE_NAME) if (directory / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{source} has no {SAFETENSORS_NAME} or {PICKLE_NAME}")
        state = load_state_dict(weights)
        model = cls(config)
        relabelled = "num_labels" in config_overrides or "id2label" in config_overrides
        old = state.get("decode_head.classifier.weight")
        if relabelled and old is not None and old.shape[0] != config.num_labels:
            state = {
                k: v for k, v in state.items() if not k.endswith(("head.classifier.weight", "head.classifier.bias"))
            }
            warnings.warn(
                f"replaced the {old.shape[0]}-class classifiers of {source} by new {config.num_labels}-class ones",
                stacklevel=2,
            )
        load_strictly(model, state, str(source), fresh=("decode_head.classifier.", "auxiliary_head.classifier."))
        return model.eval()

    @classmethod
    def _from_original(cls, path: Path, **overrides: Any) -> UperNetForSemanticSegmentation:
        """An mmsegmentation UperNet checkpoint: its backbone through `dense_backbone` (the flags the
        tensors cannot show come from `overrides`), its heads renamed, their config read off the tensors."""
        heads = mmseg_heads_to_hf(load_state_dict(path))
        if "decode_head.classifier.weight" not in heads:
            raise CheckpointError(
                f"{path} holds no UperNet decode head (decode_head.conv_seg); is it a segmentation checkpoint?"
            )
        head_fields = {k: overrides.pop(k) for k in list(overrides) if k in UPERNET_FIELDS}
        backbone = dense_backbone(path, **overrides)
        pool_scales = head_fields.pop("pool_scales", DEFAULT_POOL_SCALES)
        config = UperNetConfig(backbone_config=backbone.config, **_head_config(heads, pool_scales), **head_fields)
        model = cls(config)
        model.backbone = backbone
        load_strictly(model, {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, **heads}, str(path))
        return model.eval()

    @classmethod
    def from_backbone(
        cls,
        source: str | os.PathLike | FocalNetConfig = "focalnet-tiny",
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        backbone_overrides: dict[str, Any] | None = None,
        **head_config: Any,
    ) -> UperNetForSemanticSegmentation:
        """A new UperNet whose backbone comes from `source` and whose heads are freshly initialised.

        `source`: a preset (random weights), a `FocalNetConfig`, anything `from_pretrained` accepts
        (classifier, masked-image-modeling, backbone, timm or original checkpoints, hub ids: the
        encoder is loaded, its heads dropped), or a saved UperNet (its backbone is taken). The
        dense defaults of SPEC 10 apply (focal window 9 by zero-padding the kernels, the paper's
        drop path, output norms) unless `backbone_overrides` sets them. `head_config` sets other
        `UperNetConfig` fields (hidden_size, pool_scales, ...). Returned in training mode.
        """
        overrides = dict(backbone_overrides or {})
        if is_upernet_directory(source):
            saved = cls.from_pretrained(source)
            backbone = saved.backbone
            if overrides:
                raise ValueError(f"{source} is a saved UperNet: its backbone is taken as it is, without overrides")
        else:
            backbone = dense_backbone(source, **overrides)
        config = UperNetConfig(backbone_config=backbone.config, num_labels=num_labels, id2label=id2label, **head_config)
        model = cls(config)
        model.backbone = backbone
        return model.train()


UPERNET_FIELDS = (
    "hidden_size",
    "pool_scales",
    "auxiliary_loss_weight",
    "loss_ignore_index",
    "classifier_dropout_prob",
    "num_labels",
    "id2label",
    "label2id",
)


def _head_config(heads: dict[str, torch.Tensor], pool_scales: list[int]) -> dict[str, Any]:
    """The `UperNetConfig` fields that the head tensors show (the pool scales only by their number)."""
    count = len({key.split(".")[2] for key in heads if key.startswith("decode_head.psp_modules.")})
    if count != len(pool_scales):
        raise CheckpointError(
            f"the decode head has {count} pooling branches, not {len(pool_scales)} ({pool_scales}); "
            "pass the checkpoint's pool_scales to from_pretrained"
        )
    fields: dict[str, Any] = {
        "pool_scales": pool_scales,
        "hidden_size": heads["decode_head.bottleneck.conv.weight"].shape[0],
        "num_labels": heads["decode_head.classifier.weight"].shape[0],
        "use_auxiliary_head": "auxiliary_head.classifier.weight" in heads,
    }
    if fields["use_auxiliary_head"]:
        convs = {key.split(".")[2] for key in heads if key.startswith("auxiliary_head.convs.")}
        fields["auxiliary_num_convs"] = len(convs)
        fields["auxiliary_channels"] = heads["auxiliary_head.classifier.weight"].shape[1]
        fields["auxiliary_concat_input"] = "auxiliary_head.conv_cat.conv.weight" in heads
    return fields


def _upsample(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def is_upernet_directory(source: Any) -> bool:
    """Whether `source` is a directory whose config.json describes an UperNet."""
    if isinstance(source, FocalNetConfig):
        return False
    path = Path(source) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return UperNetConfig.from_json_file(path) is not None
    except (ValueError, TypeError):
        return False


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], source: str, fresh: tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`: a missing (other than those starting with `fresh`), unexpected or
    mis-shaped key is a `CheckpointError` naming the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(fresh)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{name} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
        for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {source} do not fit {type(model).__name__} with its config: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    model.load_state_dict(state, strict=False)
