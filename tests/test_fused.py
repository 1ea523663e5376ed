"""The fused CPU inference path computes what the plain block computes, for every block variant."""

from __future__ import annotations

import pytest
import torch

import focalnet
import focalnet.fused
from conftest import assert_close, randomize_, tiny_config

SHIPPED_MIN_FUSED_WORK = focalnet.fused._MIN_FUSED_WORK
pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("fuse_tiny_blocks")]

VARIANTS = {
    "pre_norm": dict(),
    "layerscale": dict(use_layerscale=True),
    "post_norm_layerscale": dict(use_post_layernorm=True, use_layerscale=True),
    "normalized": dict(normalize_modulator=True),
    "modulation_ln_normalized": dict(use_post_layernorm_in_modulation=True, normalize_modulator=True),
    "huge_like": dict(use_post_layernorm=True, use_layerscale=True, use_post_layernorm_in_modulation=True),
    "levels_1_and_4": dict(focal_levels=[1, 4], focal_windows=[5, 3]),
    "relu_mlp": dict(hidden_act="relu"),
    "silu_mlp": dict(hidden_act="silu"),
    "tanh_gelu_mlp": dict(hidden_act="gelu_new"),
}


def _outputs(model: torch.nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    out = model(pixels, output_hidden_states=True)
    return [out.logits, *out.hidden_states]


def _assert_same(expected: list[torch.Tensor], got: list[torch.Tensor], what: str) -> None:
    """Relative to each tensor's magnitude: large weights make every branch visible, and large values."""
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_close(a, b, what=f"{what} output {i}")


@pytest.mark.parametrize("name", VARIANTS)
def test_fused_equals_plain(name: str, fused_calls: list[int]) -> None:
    model = focalnet.FocalNetForImageClassification(tiny_config(**VARIANTS[name]))
    randomize_(model, scale=0.15).eval()
    pixels = torch.randn(2, 3, 40, 56)
    calls = fused_calls
    with torch.inference_mode():
        fused = _outputs(model, pixels)
        assert calls, "the fused path was not taken under inference_mode"
        calls.clear()
        with focalnet.fused.flags(enabled=False):
            plain = _outputs(model, pixels)
        assert not calls, "fused.flags(enabled=False) did not turn the fused path off"
        _assert_same(plain, fused, name)


def test_fp32_chunking_by_image_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(focalnet.fused, "_FP32_ROWS_PER_CHUNK", 64)  # 10x6 tokens per image: one per chunk
    model = randomize_(focalnet.FocalNetModel(tiny_config()), scale=0.15).eval()
    pixels = torch.randn(5, 3, 40, 24)
    with torch.inference_mode():
        chunked = model(pixels).last_hidden_state
        monkeypatch.setattr(focalnet.fused, "_FP32_ROWS_PER_CHUNK", 10**9)
        whole = model(pixels).last_hidden_state
    assert_close(whole, chunked, what="chunked")


def test_small_blocks_take_the_plain_path(monkeypatch: pytest.MonkeyPatch, fused_calls: list[int]) -> None:
    """Below the work threshold (tokens x C^2) a block runs plain, where oneDNN's per-call cost would dominate."""
    monkeypatch.setattr(focalnet.fused, "_MIN_FUSED_WORK", SHIPPED_MIN_FUSED_WORK)
    block = focalnet.FocalNetModel(tiny_config()).encoder.stages[0].layers[0].eval()  # 16 channels
    calls = fused_calls
    with torch.inference_mode():
        block(torch.randn(1, 8, 8, 16))
        assert not calls, "a 64-token, 16-channel block took the fused path"
        tokens = -(-SHIPPED_MIN_FUSED_WORK // 16**2)
        block(torch.randn(1, tokens, 1, 16))
        assert calls, f"a {tokens}-token block did not take the fused path"


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


def test_bfloat16_without_fused_kernels_runs_plain(monkeypatch: pytest.MonkeyPatch, fused_calls: list[int]) -> None:
    """A CPU where oneDNN has no bf16 kernels (AVX2 only) still fuses fp32 and runs bf16 plain."""
    monkeypatch.setattr(focalnet.fused, "_FUSED_DTYPES", frozenset({torch.float32}))
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(embed_dim=32))).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(pixels).logits
        assert fused_calls, "fp32 should still take the fused path"
        fused_calls.clear()
        low = model.to(torch.bfloat16)(pixels.bfloat16()).logits.float()
    assert not fused_calls, "bf16 took the fused path without kernels for it"
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), low.flatten(), dim=0)
    assert cosine > 0.999, cosine


@pytest.mark.parametrize("name", VARIANTS)
def test_fuse_for_inference_keeps_outputs(name: str) -> None:
    model = focalnet.FocalNetForImageClassification(tiny_config(**VARIANTS[name]))
    randomize_(model, scale=0.15).eval()
    pixels = torch.randn(2, 3, 40, 56)
    with torch.inference_mode():
        expected = _outputs(model, pixels)
        before = model.num_parameters()
        assert model.fuse_for_inference() is model
        _assert_same(expected, _outputs(model, pixels), f"fused {name}")
        with torch.enable_grad():
            plain = _outputs(model, pixels)  # the autograd path sees the folded weights too
        _assert_same(expected, [t.detach() for t in plain], f"fused plain path {name}")
    blocks = [b for s in model.focalnet.encoder.stages for b in s.layers]
    assert all(b.gamma_1 is None and not b.modulation.normalize_modulator for b in blocks)
    if model.config.use_layerscale:
        assert model.num_parameters() < before


def test_fused_model_refuses_to_save(tmp_path) -> None:
    model = focalnet.FocalNetModel(tiny_config(use_layerscale=True)).fuse_for_inference()
    with pytest.raises(ValueError, match="save it before fusing"):
        model.save_pretrained(tmp_path)


def test_int8_dynamic_quantization_stays_close() -> None:
    from focalnet.quantization import quantize_dynamic_int8

    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(embed_dim=32)), scale=0.05).eval()
    quantized = quantize_dynamic_int8(model)
    assert type(model.focalnet.encoder.stages[0].layers[0].mlp.fc1) is torch.nn.Linear  # original untouched
    assert type(quantized.focalnet.encoder.stages[0].layers[0].mlp.fc1) is not torch.nn.Linear
    pixels = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        reference, low = model(pixels).logits, quantized(pixels).logits
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), low.flatten(), dim=0)
    assert cosine > 0.99, cosine
    assert not torch.equal(reference, low)


def test_cpu_autocast_runs_the_plain_path() -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(embed_dim=32))).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(pixels).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(pixels).logits
    assert low.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), low.float().flatten(), dim=0)
    assert cosine > 0.999, cosine


def test_builds_without_the_fused_kernels_use_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomize_(focalnet.FocalNetModel(tiny_config())).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = model(pixels).last_hidden_state
        monkeypatch.setattr(focalnet.fused, "_FUSED_DTYPES", frozenset())
        monkeypatch.setattr(focalnet.fused, "_fused_block", None)  # would raise if still called
        assert_close(expected, model(pixels).last_hidden_state, what="plain path")
