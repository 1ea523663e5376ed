"""FocalNet models for the training tasks: a preset or any `from_pretrained` source, with the run's
config overrides and the paper's drop path rate."""

from __future__ import annotations

from typing import Any, TypeVar

from ..modeling import FocalNetPreTrainedModel
from ..presets import paper_drop_path
from .config import TrainConfig

M = TypeVar("M", bound=FocalNetPreTrainedModel)


def model_overrides(config: TrainConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config fields a run sets on its model: `model_overrides`, the drop path rate, then `extra`."""
    drop_path = config.drop_path_rate if config.drop_path_rate is not None else paper_drop_path(config.model)
    return {**config.model_overrides, "drop_path_rate": drop_path, **(extra or {})}


def build_focalnet(model_class: type[M], config: TrainConfig, extra: dict[str, Any] | None = None) -> M:
    """`model_class` from `init_from` (or a checkpoint named by `model`), else from the preset `model`."""
    from ..configuration import FocalNetConfig
    from ..presets import PRESETS

    overrides = model_overrides(config, extra)
    source = config.init_from or (None if config.model in PRESETS else config.model)
    if source is not None:
        return model_class.from_pretrained(source, **overrides)
    fresh = FocalNetConfig.from_preset(config.model, **overrides)
    return model_class(model_class.config_for_weights(fresh, {}))
