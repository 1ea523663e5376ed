"""`UperNetConfig`: transformers' UperNet fields and defaults, over a FocalNet backbone config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..configuration import (
    CONFIG_NAME,
    ConfigFile,
    FocalNetConfig,
    _check_number,
    _check_positive_int,
    label_maps,
)

MODEL_TYPE = "upernet"
DEFAULT_POOL_SCALES = [1, 2, 3, 6]
AUXILIARY_INDEX = 2
"""The auxiliary FCN head reads the third backbone output (stage 3), as mmsegmentation's and transformers'."""


def default_backbone_config() -> FocalNetConfig:
    """FocalNet-T with the paper's dense settings (focal window 9, output norms, the four stages)."""
    from ..dense import dense_config

    return dense_config("focalnet-tiny")


class UperNetConfig(ConfigFile):
    """Configuration of `UperNetForSemanticSegmentation`, field for field `transformers.UperNetConfig`.

    `backbone_config` is a `FocalNetConfig` (or its dict) whose `out_features` are the maps the
    decode head fuses, usually the four stages; default: FocalNet-T as the paper's segmentation
    backbone. `auxiliary_in_channels` None means the width of the third output (stage 3).
    Extension: `classifier_dropout_prob` (mmsegmentation's 0.1, before both classifiers; a no-op in
    eval mode, so outputs match transformers' heads, which have none).
    """

    model_type = MODEL_TYPE
    architecture = "UperNet"

    def __init__(
        self,
        backbone_config: FocalNetConfig | dict[str, Any] | None = None,
        hidden_size: int = 512,
        initializer_range: float = 0.02,
        pool_scales: list[int] | tuple[int, ...] = tuple(DEFAULT_POOL_SCALES),
        use_auxiliary_head: bool = True,
        auxiliary_loss_weight: float = 0.4,
        auxiliary_in_channels: int | None = None,
        auxiliary_channels: int = 256,
        auxiliary_num_convs: int = 1,
        auxiliary_concat_input: bool = False,
        loss_ignore_index: int = 255,
        classifier_dropout_prob: float = 0.1,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        if backbone_config is None:
            backbone_config = default_backbone_config()
        elif isinstance(backbone_config, dict):
            backbone_config = FocalNetConfig.from_dict(backbone_config)
        elif not isinstance(backbone_config, FocalNetConfig):
            raise TypeError(
                f"backbone_config must be a FocalNetConfig or its dict, got {type(backbone_config).__name__}"
            )
        self.backbone_config = backbone_config
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.pool_scales = list(pool_scales)
        self.use_auxiliary_head = use_auxiliary_head
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.auxiliary_in_channels = auxiliary_in_channels
        self.auxiliary_channels = auxiliary_channels
        self.auxiliary_num_convs = auxiliary_num_convs
        self.auxiliary_concat_input = auxiliary_concat_input
        self.loss_ignore_index = loss_ignore_index
        self.classifier_dropout_prob = classifier_dropout_prob
        self.id2label, self.label2id = label_maps(num_labels, id2label, label2id)
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        kwargs.pop("model_type", None)
        self.extra = dict(kwargs)  # keys of other writers (architectures, transformers_version), kept
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()

    # ----------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        self.id2label, self.label2id = label_maps(value, None, None)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def in_channels(self) -> list[int]:
        """The widths of the backbone outputs the heads read."""
        widths = [self.backbone_config.embed_dim, *self.backbone_config.stage_widths]
        return [widths[i] for i in self.backbone_config.out_indices]

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        _check_positive_int("hidden_size", self.hidden_size)
        _check_positive_int("auxiliary_channels", self.auxiliary_channels)
        _check_number("initializer_range", self.initializer_range, low=0.0)
        _check_number("auxiliary_loss_weight", self.auxiliary_loss_weight, low=0.0)
        _check_number("classifier_dropout_prob", self.classifier_dropout_prob, low=0.0, high=1.0)
        if not self.pool_scales:
            raise ValueError("pool_scales must list at least one pooling size, e.g. [1, 2, 3, 6]")
        for scale in self.pool_scales:
            _check_positive_int("every entry of pool_scales", scale)
        count = self.auxiliary_num_convs
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"auxiliary_num_convs must be an integer >= 0, got {count!r}")
        if not isinstance(self.loss_ignore_index, int) or isinstance(self.loss_ignore_index, bool):
            raise ValueError(f"loss_ignore_index must be an integer, got {self.loss_ignore_index!r}")
        if self.num_labels < 1:
            raise ValueError("a segmentation model needs num_labels >= 1 (or id2label with the class names)")
        outputs = self.backbone_config.out_features
        if self.use_auxiliary_head and len(outputs) <= AUXILIARY_INDEX:
            raise ValueError(
                f"the auxiliary head reads backbone output {AUXILIARY_INDEX} but the backbone returns only "
                f"{outputs}; return the four stages (out_features) or set use_auxiliary_head=False"
            )
        if self.use_auxiliary_head and self.auxiliary_in_channels is not None:
            _check_positive_int("auxiliary_in_channels", self.auxiliary_in_channels)
            width = self.in_channels[AUXILIARY_INDEX]
            if self.auxiliary_in_channels != width:
                raise ValueError(
                    f"auxiliary_in_channels={self.auxiliary_in_channels} but backbone output "
                    f"{outputs[AUXILIARY_INDEX]} is {width} wide; set it to {width} or None"
                )

    # ----------------------------------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        return {
            "backbone_config": self.backbone_config.to_dict(),
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "pool_scales": list(self.pool_scales),
            "use_auxiliary_head": self.use_auxiliary_head,
            "auxiliary_loss_weight": self.auxiliary_loss_weight,
            "auxiliary_in_channels": self.auxiliary_in_channels,
            "auxiliary_channels": self.auxiliary_channels,
            "auxiliary_num_convs": self.auxiliary_num_convs,
            "auxiliary_concat_input": self.auxiliary_concat_input,
            "loss_ignore_index": self.loss_ignore_index,
            "classifier_dropout_prob": self.classifier_dropout_prob,
        }

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **overrides: Any) -> UperNetConfig:
        """Read the config of a directory holding `config.json`, or of a JSON file."""
        path = Path(source)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls.from_dict(cls.from_json_file(path).to_dict(), **overrides)
