"""The fused CPU inference path computes what the plain block computes, for every block variant."""

from __future__ import annotations

import pytest
import torch

import focalnet
import focalnet.fused
from conftest import assert_close, randomize_, tiny_config

VARIANTS = {
    "pre_norm": dict(),
    "layerscale": dict(use_layerscale=True),
    "post_norm_layerscale": dict(use_post_layernorm=True, use_layerscale=True),
    "modulation_ln_normalized": dict(use_post_layernorm_in_modulation=True, normalize_modulator=True),
    "huge_like": dict(use_post_layernorm=True, use_layerscale=True, use_post_layernorm_in_modulation=True),
    "levels_1_and_4": dict(focal_levels=[1, 4], focal_windows=[5, 3]),
    "relu_mlp": dict(hidden_act="relu"),
    "silu_mlp": dict(hidden_act="silu"),
    "tanh_gelu_mlp": dict(hidden_act="gelu_new"),
}


def _run_plain(model: torch.nn.Module, pixels: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    with monkeypatch.context() as patch:
        patch.setattr(focalnet.layers, "fused_path_available", lambda x: False)
        return model(pixels).logits


@pytest.mark.parametrize("name", VARIANTS)
def test_fused_equals_plain(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(**VARIANTS[name]))).eval()
    pixels = torch.randn(2, 3, 40, 56)
    calls = []
    original = focalnet.fused._fused_block
    monkeypatch.setattr(focalnet.fused, "_fused_block", lambda *a: calls.append(1) or original(*a))
    with torch.inference_mode():
        fused = model(pixels).logits
        assert calls, "the fused path was not taken under inference_mode"
        assert_close(_run_plain(model, pixels, monkeypatch), fused, what=name)


def test_fp32_chunking_by_image_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(focalnet.fused, "_FP32_ROWS_PER_CHUNK", 64)  # 10x6 tokens per image: one per chunk
    model = randomize_(focalnet.FocalNetModel(tiny_config())).eval()
    pixels = torch.randn(5, 3, 40, 24)
    with torch.inference_mode():
        chunked = model(pixels).last_hidden_state
        monkeypatch.setattr(focalnet.fused, "_FP32_ROWS_PER_CHUNK", 10**9)
        whole = model(pixels).last_hidden_state
    assert_close(whole, chunked, what="chunked")


def test_plain_path_when_gradients_or_training_or_modulators() -> None:
    model = focalnet.FocalNetModel(tiny_config())
    pixels = torch.randn(1, 3, 32, 32)
    assert model(pixels).last_hidden_state.requires_grad  # grad enabled: autograd path
    model.eval()
    with torch.no_grad():
        out = model(pixels, output_modulators=True)
    assert len(out.modulators) == 2  # modulators come from the plain path


def test_bfloat16_fused_stays_close_to_fp32() -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(embed_dim=32))).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(pixels).logits
        low = model.to(torch.bfloat16)(pixels.bfloat16()).logits.float()
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), low.flatten(), dim=0)
    assert cosine > 0.999, cosine
