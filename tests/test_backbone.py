"""FocalNetBackbone: per-stage maps before downsampling, at strides 4/8/16/32 and widths C..8C."""

from __future__ import annotations

import pytest
import torch
import transformers

import focalnet
from conftest import assert_close, randomize_

pytestmark = pytest.mark.numerics

ALL = ["stem", "stage1", "stage2", "stage3", "stage4"]


def _config(**overrides) -> focalnet.FocalNetConfig:
    return focalnet.FocalNetConfig(**{"embed_dim": 16, "depths": [1, 1, 2, 1], "out_features": ALL, **overrides})


def test_strides_and_widths() -> None:
    backbone = focalnet.FocalNetBackbone(_config()).eval()
    assert backbone.channels == [16, 16, 32, 64, 128]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 128, 96)).feature_maps
    assert [tuple(m.shape) for m in maps] == [
        (1, 16, 32, 24),
        (1, 16, 32, 24),
        (1, 32, 16, 12),
        (1, 64, 8, 6),
        (1, 128, 4, 3),
    ]


def test_maps_equal_transformers_encoder_before_downsampling() -> None:
    hf_config = transformers.FocalNetConfig(embed_dim=16, depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 128])
    hf_model = randomize_(transformers.FocalNetModel(hf_config)).eval()
    backbone = focalnet.FocalNetBackbone(_config()).eval()
    backbone.focalnet.load_state_dict(hf_model.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 75, 50)
    with torch.no_grad():
        # HF's encoder flag for these maps reshapes them wrongly, so walk its stages by hand
        hidden, dims = hf_model.embeddings(pixels)
        expected = [hidden.transpose(1, 2).reshape(2, 16, *dims)]
        for stage in hf_model.encoder.stages:
            next_hidden, before, _ = stage(hidden, dims)
            expected.append(before.transpose(1, 2).reshape(2, -1, *dims))
            dims = (-(-dims[0] // 2), -(-dims[1] // 2))
            hidden = next_hidden
        maps = backbone(pixels).feature_maps
    assert len(maps) == len(expected) == 5
    for name, a, b in zip(ALL, expected, maps, strict=True):
        assert_close(a, b, what=name)


def test_selected_outputs_and_early_stop() -> None:
    backbone = focalnet.FocalNetBackbone(_config(out_features=None, out_indices=[1, 2])).eval()
    assert backbone.out_features == ["stage1", "stage2"]
    assert backbone.channels == [16, 32]
    calls = []
    backbone.focalnet.encoder.stages[3].register_forward_pre_hook(lambda *args: calls.append(1))
    for block in backbone.focalnet.encoder.stages[3].layers:
        block.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in out.feature_maps] == [16, 32]
    assert calls == [], "stages after the last requested output were run"


def test_default_is_last_stage_like_transformers() -> None:
    backbone = focalnet.FocalNetBackbone(focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1]))
    assert backbone.out_features == ["stage4"] and backbone.channels == [128]


def test_optional_layernorm_per_output() -> None:
    plain = focalnet.FocalNetBackbone(_config()).eval()
    normed = focalnet.FocalNetBackbone(_config(use_backbone_layernorm=True)).eval()
    normed.focalnet.load_state_dict(plain.focalnet.state_dict())
    randomize_(normed.hidden_states_norms)
    assert sorted(normed.hidden_states_norms) == sorted(ALL)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = plain(pixels).feature_maps
        out = normed(pixels).feature_maps
    for name, r, o in zip(ALL, raw, out, strict=True):
        norm = normed.hidden_states_norms[name]
        assert_close(norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), o, what=name)


def test_hidden_states_and_tuple_output() -> None:
    backbone = focalnet.FocalNetBackbone(_config()).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64), output_hidden_states=True, return_dict=False)
    feature_maps, hidden_states = out
    assert len(feature_maps) == 5 and len(hidden_states) == 5
    assert hidden_states[0].shape == (1, 256, 16)


@pytest.mark.parametrize("name", ["stem", "stage3"])
def test_backbone_state_dict_has_transformers_keys(name: str) -> None:
    hf_config = transformers.FocalNetConfig(embed_dim=16, depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 128])
    hf_backbone = transformers.FocalNetBackbone(hf_config)
    ours = focalnet.FocalNetBackbone(_config(out_features=[name]))
    assert ours.state_dict().keys() == hf_backbone.state_dict().keys()
