"""Same weights in timm (through our own key mapping) and here give the same outputs.

timm floors odd sizes where HF pads, so the comparison runs at multiples of 32.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.focalnet import FocalNet

import focalnet
from conftest import TIMM_FAMILIES, assert_close, randomize_
from focalnet.formats import hf_to_timm, timm_to_hf

pytestmark = pytest.mark.numerics

CONFIGS = {
    **TIMM_FAMILIES,
    "lrf_window5": (
        dict(focal_levels=[3] * 4, focal_windows=[5] * 4),
        dict(focal_levels=[3] * 4, focal_windows=[5] * 4),
    ),
    "normalized_per_stage": (
        dict(normalize_modulator=True, focal_levels=[1, 2, 3, 4]),
        dict(normalize_modulator=True, focal_levels=[1, 2, 3, 4]),
    ),
}


def _pair(name: str) -> tuple[FocalNet, focalnet.FocalNetForImageClassification]:
    ours_kwargs, timm_kwargs = CONFIGS[name]
    config = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 2, 1, 1], num_labels=6, **ours_kwargs)
    timm_model = FocalNet(embed_dim=16, depths=[1, 2, 1, 1], num_classes=6, **timm_kwargs).eval()
    randomize_(timm_model)
    ours = focalnet.FocalNetForImageClassification(config).eval()
    ours.load_state_dict(timm_to_hf(timm_model.state_dict()), strict=True)
    return timm_model, ours


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_stage_features_match_timm(name: str) -> None:
    timm_model, ours = _pair(name)
    backbone = focalnet.FocalNetBackbone(
        focalnet.FocalNetConfig.from_dict(ours.config.to_dict(), out_features=["stage1", "stage2", "stage3", "stage4"])
    ).eval()
    backbone.focalnet.load_state_dict(ours.focalnet.state_dict(), strict=True)
    for size in [(64, 64), (96, 160)]:
        pixels = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert_close(timm_model(pixels), ours(pixels).logits, what=f"logits {size}")
            timm_features = timm_model.forward_intermediates(pixels, intermediates_only=True)
            for i, (a, b) in enumerate(zip(timm_features, backbone(pixels).feature_maps, strict=True)):
                assert_close(a, b, what=f"stage{i + 1} {size}")


@pytest.mark.parametrize("name", CONFIGS)
def test_timm_layout_round_trip(name: str) -> None:
    timm_model, ours = _pair(name)
    converted = hf_to_timm(ours.state_dict(), ours.config)
    assert converted.keys() == timm_model.state_dict().keys()
    for key, value in timm_model.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_unknown_key_is_reported() -> None:
    with pytest.raises(KeyError, match="no rule maps the key 'pos_embed'"):
        timm_to_hf({"pos_embed": torch.zeros(1)})
