"""Every official variant builds with the published parameter count (on the meta device: no memory)."""

from __future__ import annotations

import pytest
import torch

import focalnet
from focalnet.presets import PRESETS


@pytest.mark.parametrize("name", focalnet.list_presets())
def test_parameter_count_matches_publication(name: str) -> None:
    preset = PRESETS[name]
    config = focalnet.FocalNetConfig.from_preset(name)
    with torch.device("meta"):
        model = (
            focalnet.FocalNetForImageClassification(config)
            if preset.params_include_head
            else focalnet.FocalNetModel(config)
        )
    count = model.num_parameters()
    assert abs(count - preset.reported_params) <= preset.reported_rounding // 2, f"{name}: {count:,} params"


def test_hidden_sizes_metadata_matches_hub_files() -> None:
    assert focalnet.FocalNetConfig.from_preset("focalnet-tiny").hidden_sizes == [192, 384, 768, 768]
    assert focalnet.FocalNetConfig.from_preset("focalnet-base").hidden_sizes == [256, 512, 1024, 1024]
