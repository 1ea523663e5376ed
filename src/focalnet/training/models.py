"""FocalNet models for the training tasks: a preset or any `from_pretrained` source, with the run's
config overrides and the paper's drop path rate."""

from __future__ import annotations

from typing import Any, TypeVar

from ..modeling import FocalNetPreTrainedModel
from .config import TrainConfig

M = TypeVar("M", bound=FocalNetPreTrainedModel)


def paper_drop_path(model_name: str) -> float:
    """The paper's stochastic depth for a preset: T 0.2, S 0.3, B and larger 0.5 (others 0.1)."""
    for size, rate in (("tiny", 0.2), ("small", 0.3), ("base", 0.5), ("large", 0.5), ("huge", 0.5)):
        if size in model_name:
            return rate
    return 0.1


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
