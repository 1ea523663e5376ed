"""Same weights in `transformers` and here give the same outputs (fp32, max abs diff <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
import transformers

import focalnet
from conftest import assert_close, randomize_

pytestmark = pytest.mark.numerics

# Every flag of the config, 1-4 focal levels, windows 3 and 5, per-stage levels, 1-4 stages,
# patch sizes 2/3/4/16, 1 and 3 channels, the MLP activations.
CONFIGS = {
    "plain": dict(embed_dim=24, depths=[1, 1, 2, 1]),
    "conv_embed": dict(embed_dim=24, depths=[1, 1, 1, 1], use_conv_embed=True),
    "post_layernorm_layerscale": dict(embed_dim=16, depths=[2, 1, 2, 1], use_post_layernorm=True, use_layerscale=True),
    "modulation_ln_normalized": dict(
        embed_dim=16, depths=[1, 1, 1, 1], use_post_layernorm_in_modulation=True, normalize_modulator=True
    ),
    "one_level_window5": dict(embed_dim=16, depths=[1, 2, 1, 1], focal_levels=[1] * 4, focal_windows=[5] * 4),
    "per_stage_levels": dict(embed_dim=16, depths=[1, 1, 1, 1], focal_levels=[1, 2, 3, 4], focal_windows=[3, 5, 3, 5]),
    "isotropic_patch16": dict(embed_dim=32, depths=[3], focal_levels=[3], focal_windows=[3], patch_size=16),
    "two_stages_patch2_gray": dict(
        embed_dim=16, depths=[1, 2], focal_levels=[2, 2], focal_windows=[3, 3], patch_size=2, num_channels=1
    ),
    "three_stages_patch3_relu": dict(
        embed_dim=16, depths=[1, 1, 1], focal_levels=[2, 3, 2], focal_windows=[3] * 3, patch_size=3, hidden_act="relu"
    ),
    "large_like": dict(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        focal_levels=[4] * 4,
        use_conv_embed=True,
        use_post_layernorm=True,
        use_layerscale=True,
        normalize_modulator=True,
        mlp_ratio=2.0,
    ),
    "huge_like": dict(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        focal_levels=[3] * 4,
        use_conv_embed=True,
        use_post_layernorm=True,
        use_layerscale=True,
        use_post_layernorm_in_modulation=True,
        hidden_act="gelu_new",
    ),
}
SIZES = [(64, 64), (50, 75), (33, 17)]  # square, non-square, neither a multiple of the stride


def _configs(name: str, **extra) -> tuple[transformers.FocalNetConfig, focalnet.FocalNetConfig]:
    kwargs = dict(CONFIGS[name], num_labels=5, **extra)
    stages = len(kwargs["depths"])
    kwargs.setdefault("focal_levels", [2] * stages)
    kwargs.setdefault("focal_windows", [3] * stages)
    kwargs["encoder_stride"] = kwargs.get("patch_size", 4) * 2 ** (stages - 1)
    widths = [kwargs["embed_dim"] * 2**i for i in range(stages)]
    hf_config = transformers.FocalNetConfig(hidden_sizes=widths, **kwargs)
    return hf_config, focalnet.FocalNetConfig(**kwargs)


def _pair(hf_cls, our_cls, name: str, **extra):
    hf_config, our_config = _configs(name, **extra)
    hf_model = randomize_(hf_cls(hf_config)).eval()
    ours = our_cls(our_config).eval()
    ours.load_state_dict(hf_model.state_dict(), strict=True)
    return hf_model, ours


def _compare_hidden(theirs, ours) -> None:
    assert len(theirs.hidden_states) == len(ours.hidden_states)
    for i, (a, b) in enumerate(zip(theirs.hidden_states, ours.hidden_states, strict=True)):
        assert_close(a, b, what=f"hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(theirs.reshaped_hidden_states, ours.reshaped_hidden_states, strict=True)):
        assert_close(a, b, what=f"reshaped_hidden_states[{i}]")


@pytest.mark.parametrize("name", CONFIGS)
def test_classification_parity(name: str) -> None:
    hf_model, ours = _pair(transformers.FocalNetForImageClassification, focalnet.FocalNetForImageClassification, name)
    channels = ours.config.num_channels
    for batch, size in zip([2, 1, 2], SIZES, strict=True):
        pixels = torch.randn(batch, channels, *size)
        labels = torch.randint(0, 5, (batch,))
        with torch.no_grad():
            theirs = hf_model(pixels, labels=labels, output_hidden_states=True)
            mine = ours(pixels, labels=labels, output_hidden_states=True)
        assert_close(theirs.logits, mine.logits, what=f"logits {size}")
        assert_close(theirs.loss, mine.loss, what=f"loss {size}")
        _compare_hidden(theirs, mine)


@pytest.mark.parametrize("name", ["plain", "large_like", "isotropic_patch16", "two_stages_patch2_gray"])
def test_base_model_parity(name: str) -> None:
    hf_model, ours = _pair(transformers.FocalNetModel, focalnet.FocalNetModel, name)
    pixels = torch.randn(2, ours.config.num_channels, 70, 45)
    with torch.no_grad():
        theirs = hf_model(pixels, output_hidden_states=True)
        mine = ours(pixels, output_hidden_states=True)
    assert_close(theirs.last_hidden_state, mine.last_hidden_state, what="last_hidden_state")
    assert_close(theirs.pooler_output, mine.pooler_output, what="pooler_output")
    _compare_hidden(theirs, mine)


@pytest.mark.parametrize("name", ["plain", "conv_embed", "huge_like", "isotropic_patch16", "two_stages_patch2_gray"])
def test_masked_image_modeling_parity(name: str) -> None:
    """HF's MIM head handles only square inputs of config.image_size; compare there."""
    hf_config, _ = _configs(name)
    side = hf_config.encoder_stride * 2
    hf_model, ours = _pair(
        transformers.FocalNetForMaskedImageModeling, focalnet.FocalNetForMaskedImageModeling, name, image_size=side
    )
    with torch.no_grad():
        hf_model.focalnet.embeddings.mask_token.normal_()
        ours.focalnet.embeddings.mask_token.copy_(hf_model.focalnet.embeddings.mask_token)
    patches = (side // ours.config.patch_size_2d[0]) ** 2
    pixels = torch.randn(2, ours.config.num_channels, side, side)
    mask = torch.rand(2, patches) < 0.6
    with torch.no_grad():
        theirs = hf_model(pixels, bool_masked_pos=mask, output_hidden_states=True)
        mine = ours(pixels, bool_masked_pos=mask, output_hidden_states=True)
    assert_close(theirs.reconstruction, mine.reconstruction, what="reconstruction")
    assert_close(theirs.loss, mine.loss, what="loss")
    _compare_hidden(theirs, mine)


@pytest.mark.parametrize("size", [(64, 96), (50, 75)])
def test_masked_image_modeling_any_size(size: tuple[int, int]) -> None:
    """Where HF's head cannot go (non-square, not image_size), build its answer from HF's parts."""
    hf_model, ours = _pair(
        transformers.FocalNetForMaskedImageModeling, focalnet.FocalNetForMaskedImageModeling, "plain"
    )
    with torch.no_grad():
        hf_model.focalnet.embeddings.mask_token.normal_()
        ours.focalnet.embeddings.mask_token.copy_(hf_model.focalnet.embeddings.mask_token)
    grid = (-(-size[0] // 4), -(-size[1] // 4))
    pixels = torch.randn(2, 3, *size)
    mask = torch.rand(2, grid[0] * grid[1]) < 0.5
    with torch.no_grad():
        mine = ours(pixels, bool_masked_pos=mask)
        encoded = hf_model.focalnet(pixels, bool_masked_pos=mask).last_hidden_state
        final = (-(-size[0] // 32), -(-size[1] // 32))
        features = encoded.transpose(1, 2).reshape(2, -1, *final)
        expected = hf_model.decoder(features)[..., : size[0], : size[1]]
    assert mine.reconstruction.shape == pixels.shape
    assert_close(expected, mine.reconstruction, what="reconstruction")
    pixel_mask = mask.reshape(2, *grid).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None, : size[0], : size[1]]
    l1 = (pixels - expected).abs() * pixel_mask
    expected_loss = l1.sum() / (pixel_mask.sum() + 1e-5) / 3
    assert_close(expected_loss, mine.loss, what="loss")


def _classifier_pair(**kwargs):
    kwargs = dict(CONFIGS["plain"], **kwargs)
    hf_model = randomize_(transformers.FocalNetForImageClassification(transformers.FocalNetConfig(**kwargs))).eval()
    ours = focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**kwargs)).eval()
    ours.load_state_dict(hf_model.state_dict(), strict=True)
    return hf_model, ours


@pytest.mark.parametrize(
    ("num_labels", "problem_type", "labels"),
    [
        (1, None, torch.randn(3)),  # one output: regression
        (4, None, torch.rand(3, 4)),  # float targets: multi-label
        (4, None, torch.randint(0, 4, (3,))),  # integer targets: single-label
        (4, None, torch.tensor([1, -100, 2])),  # ignore_index -100
        (4, "regression", torch.rand(3, 4)),
        (4, "multi_label_classification", torch.rand(3, 4)),
    ],
)
def test_loss_matches_transformers(num_labels: int, problem_type: str | None, labels: torch.Tensor) -> None:
    hf_model, ours = _classifier_pair(num_labels=num_labels, problem_type=problem_type)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = hf_model(pixels, labels=labels).loss
        got = ours(pixels, labels=labels).loss
    assert_close(expected, got, what=f"{problem_type} {labels.dtype}")


def test_tuple_outputs_match_transformers_order() -> None:
    hf_model, ours = _classifier_pair(num_labels=3)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        theirs = hf_model(pixels, labels=labels, output_hidden_states=True, return_dict=False)
        mine = ours(pixels, labels=labels, output_hidden_states=True, return_dict=False)
        as_dict = ours(pixels, labels=labels)
    assert isinstance(mine, tuple) and len(theirs) == 3  # HF: (loss, logits, hidden_states)
    assert_close(theirs[0], mine[0], what="loss")
    assert_close(theirs[1], mine[1], what="logits")
    for a, b in zip(theirs[2], mine[2], strict=True):
        assert_close(a, b, what="hidden state")
    assert as_dict[0] is as_dict["loss"] is as_dict.loss
    assert list(as_dict.keys()) == ["loss", "logits"]


@pytest.mark.parametrize("name", ["plain", "large_like", "huge_like", "per_stage_levels"])
def test_training_path_outputs_and_gradients_match_transformers(name: str) -> None:
    """With autograd on, the model runs its training kernels; outputs and every gradient match HF's."""
    hf_model, ours = _pair(transformers.FocalNetForImageClassification, focalnet.FocalNetForImageClassification, name)
    pixels, labels = torch.randn(2, 3, 64, 48), torch.tensor([1, 4])
    theirs = hf_model(pixels, labels=labels, output_hidden_states=True)
    mine = ours(pixels, labels=labels, output_hidden_states=True)
    assert mine.loss.requires_grad
    assert_close(theirs.logits, mine.logits, what="logits")
    _compare_hidden(theirs, mine)
    theirs.loss.backward()
    mine.loss.backward()
    their_grads = dict(hf_model.named_parameters())
    for key, param in ours.named_parameters():
        expected = their_grads[key].grad
        assert_close(expected, param.grad, what=f"grad {key}")
