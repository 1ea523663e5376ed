"""Bad model input fails early with a clear error; unusual but valid input works."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from focalnet import (
    FocalNetBackbone,
    FocalNetConfig,
    FocalNetForImageClassification,
    FocalNetForMaskedImageModeling,
    FocalNetModel,
)

pytestmark = pytest.mark.numerics

ALL_CLASSES = [FocalNetModel, FocalNetForImageClassification, FocalNetForMaskedImageModeling, FocalNetBackbone]
CLASS_IDS = [cls.__name__ for cls in ALL_CLASSES]


def make_config(**overrides) -> FocalNetConfig:
    kwargs = dict(
        embed_dim=16,
        depths=[1, 1],
        focal_levels=[2, 2],
        focal_windows=[3, 3],
        num_labels=3,
        encoder_stride=8,  # patch 4 * 2**(2 stages - 1)
        drop_path_rate=0.0,
    )
    kwargs.update(overrides)
    return FocalNetConfig(**kwargs)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = make_config()
    return {cls: cls(config).eval() for cls in ALL_CLASSES}


def run(model, pixel_values, **kwargs):
    with torch.no_grad():
        return model(pixel_values, **kwargs)


# --------------------------------------------------------------------------------------------
# bad pixel_values, for every model class


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_wrong_channel_count(models, cls):
    with pytest.raises(ValueError, match="num_channels") as info:
        run(models[cls], torch.randn(2, 1, 16, 16))
    assert "1 channels" in str(info.value) or "got 1" in str(info.value)
    with pytest.raises(ValueError, match="num_channels"):
        run(models[cls], torch.randn(2, 4, 16, 16))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_three_d_tensor_suggests_unsqueeze(models, cls):
    with pytest.raises(ValueError, match="unsqueeze"):
        run(models[cls], torch.randn(3, 16, 16))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("shape", [(16, 16), (1, 1, 3, 16, 16)])
def test_wrong_rank(models, cls, shape):
    with pytest.raises(ValueError, match="4-D"):
        run(models[cls], torch.randn(*shape))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_dtype(models, cls, dtype):
    pixels = torch.zeros(2, 3, 16, 16, dtype=dtype)
    with pytest.raises(TypeError, match="float"):
        run(models[cls], pixels)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_empty_batch(models, cls):
    with pytest.raises(ValueError, match="empty"):
        run(models[cls], torch.randn(0, 3, 16, 16))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("shape", [(1, 3, 0, 16), (1, 3, 16, 0)])
def test_empty_spatial_size(models, cls, shape):
    with pytest.raises(ValueError, match="empty"):
        run(models[cls], torch.randn(*shape))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize(
    "value",
    [
        np.zeros((1, 3, 16, 16), dtype=np.float32),
        torch.zeros(1, 3, 16, 16).tolist(),
        "image.png",
    ],
    ids=["numpy", "list", "str"],
)
def test_non_tensor_input(models, cls, value):
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        run(models[cls], value)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_pixel_values_none(models, cls):
    with pytest.raises(ValueError, match="pixel_values"):
        run(models[cls], None)


def test_pixel_values_missing_keyword(models):
    with pytest.raises(ValueError, match="pixel_values"), torch.no_grad():
        models[FocalNetForImageClassification]()


# --------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("shape", [(2, 15), (2, 17), (2, 64), (1, 16), (2, 4, 5)])
def test_mim_mask_wrong_shape(models, shape):
    # 16x16 input, patch 4: the stem grid is 4x4, 16 flags per image
    mask = torch.zeros(shape, dtype=torch.bool)
    with pytest.raises(ValueError, match="bool_masked_pos") as info:
        run(models[FocalNetForMaskedImageModeling], torch.randn(2, 3, 16, 16), bool_masked_pos=mask)
    assert re.search(re.escape("(2, 16)"), str(info.value)), str(info.value)


def test_mim_mask_expected_shape_follows_input_size(models):
    # 20x28 input, patch 4: 5x7 grid, 35 flags per image
    mask = torch.zeros(1, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape("(1, 35)")):
        run(models[FocalNetForMaskedImageModeling], torch.randn(1, 3, 20, 28), bool_masked_pos=mask)


def test_mask_given_to_model_without_mask_token(models):
    mask = torch.zeros(2, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask token"):
        run(models[FocalNetModel], torch.randn(2, 3, 16, 16), bool_masked_pos=mask)


def test_model_with_mask_token_accepts_mask():
    model = FocalNetModel(make_config(), use_mask_token=True).eval()
    with torch.no_grad():
        model.embeddings.mask_token.fill_(3.0)
    pixels = torch.randn(2, 3, 16, 16)
    none = torch.zeros(2, 16, dtype=torch.bool)
    some = none.clone()
    some[:, :5] = True
    plain = run(model, pixels).last_hidden_state
    assert torch.equal(run(model, pixels, bool_masked_pos=none).last_hidden_state, plain)
    masked = run(model, pixels, bool_masked_pos=some).last_hidden_state
    assert masked.shape == plain.shape == (2, 4, 32)
    assert not torch.allclose(masked, plain)


def test_mim_accepts_grid_shaped_mask(models):
    model = models[FocalNetForMaskedImageModeling]
    pixels = torch.randn(2, 3, 16, 16)
    flat = torch.zeros(2, 16, dtype=torch.bool)
    flat[0, 3] = flat[1, 10] = True
    a = run(model, pixels, bool_masked_pos=flat)
    b = run(model, pixels, bool_masked_pos=flat.view(2, 4, 4))
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(a.loss, b.loss)


# --------------------------------------------------------------------------------------------
# labels


def test_labels_without_classifier():
    model = FocalNetForImageClassification(make_config(num_labels=0)).eval()
    pixels = torch.randn(2, 3, 16, 16)
    out = run(model, pixels)
    assert out.logits.shape == (2, 32)  # Identity head: pooled features
    with pytest.raises(ValueError, match="num_labels"):
        run(model, pixels, labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 2]), torch.tensor([1]), torch.tensor([[0, 1], [1, 2]])])
def test_single_label_wrong_count(models, labels):
    with pytest.raises(ValueError, match=r"labels|class index"):
        run(models[FocalNetForImageClassification], torch.randn(2, 3, 16, 16), labels=labels)


def test_single_label_right_count(models):
    out = run(models[FocalNetForImageClassification], torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 2]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2]))
    assert torch.allclose(out.loss, expected)


@pytest.fixture(scope="module")
def regressor():
    return FocalNetForImageClassification(make_config(num_labels=1)).eval()


def test_regression_labels_right_count(regressor):
    pixels = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([0.5, -1.0])
    for labels in (targets, targets.view(2, 1)):
        out = run(regressor, pixels, labels=labels)
        assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.view(2), targets))


def test_regression_labels_too_many(regressor):
    with pytest.raises(ValueError, match="labels"):
        run(regressor, torch.randn(2, 3, 16, 16), labels=torch.randn(3))


def test_regression_labels_too_few(regressor):
    with pytest.raises(ValueError, match="labels"):
        run(regressor, torch.randn(2, 3, 16, 16), labels=torch.tensor([0.5]))


def test_multi_label_wrong_shape(models):
    with pytest.raises(ValueError, match=re.escape("(2, 3)")):
        run(models[FocalNetForImageClassification], torch.randn(2, 3, 16, 16), labels=torch.rand(2, 4))


# --------------------------------------------------------------------------------------------
# constructors


@pytest.mark.parametrize("encoder_stride", [32, 4, 16])
def test_mim_encoder_stride_mismatch(encoder_stride):
    with pytest.raises(ValueError, match="encoder_stride") as info:
        FocalNetForMaskedImageModeling(make_config(encoder_stride=encoder_stride))
    assert "8" in str(info.value)  # the stride that would work


def test_mim_encoder_stride_match_other_shapes():
    # one stage, patch 16 (isotropic): total stride 16
    config = make_config(depths=[1], focal_levels=[2], focal_windows=[3], patch_size=16, encoder_stride=16)
    model = FocalNetForMaskedImageModeling(config).eval()
    out = run(model, torch.randn(1, 3, 32, 48))
    assert out.reconstruction.shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="encoder_stride"):
        FocalNetForMaskedImageModeling(make_config(depths=[1], focal_levels=[2], focal_windows=[3], encoder_stride=8))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("bad", [None, {"embed_dim": 16}, "focalnet-tiny"], ids=["none", "dict", "str"])
def test_constructor_needs_config(cls, bad):
    with pytest.raises(TypeError, match="FocalNetConfig"):
        cls(bad)


# --------------------------------------------------------------------------------------------
# valid unusual inputs


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_batch_size_one(models, cls):
    model = models[cls]
    pixels = torch.randn(2, 3, 16, 16)
    single = run(model, pixels[:1])
    both = run(model, pixels)
    if cls is FocalNetModel:
        assert single.last_hidden_state.shape == (1, 4, 32)
        assert torch.allclose(single.last_hidden_state, both.last_hidden_state[:1], atol=1e-5)
    elif cls is FocalNetForImageClassification:
        assert single.logits.shape == (1, 3)
        assert torch.allclose(single.logits, both.logits[:1], atol=1e-5)
    elif cls is FocalNetForMaskedImageModeling:
        assert single.reconstruction.shape == (1, 3, 16, 16)
        assert torch.allclose(single.reconstruction, both.reconstruction[:1], atol=1e-5)
    else:
        assert [f.shape for f in single.feature_maps] == [(1, 32, 2, 2)]
        assert torch.allclose(single.feature_maps[0], both.feature_maps[0][:1], atol=1e-5)


def test_batch_size_one_with_labels_and_mask(models):
    pixels = torch.randn(1, 3, 16, 16)
    out = run(models[FocalNetForImageClassification], pixels, labels=torch.tensor([1]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :8] = True
    out = run(models[FocalNetForMaskedImageModeling], pixels, bool_masked_pos=mask)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss > 0


def test_one_channel_config():
    config = make_config(num_channels=1, out_features=["stem", "stage1", "stage2"])
    pixels = torch.randn(2, 1, 16, 16)
    hidden = run(FocalNetModel(config).eval(), pixels)
    assert hidden.last_hidden_state.shape == (2, 4, 32)
    assert hidden.pooler_output.shape == (2, 32)
    logits = run(FocalNetForImageClassification(config).eval(), pixels).logits
    assert logits.shape == (2, 3)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    mim = run(FocalNetForMaskedImageModeling(config).eval(), pixels, bool_masked_pos=mask)
    assert mim.reconstruction.shape == (2, 1, 16, 16)
    assert torch.isfinite(mim.loss)
    maps = run(FocalNetBackbone(config).eval(), pixels).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 4, 4), (2, 16, 4, 4), (2, 32, 2, 2)]
    with pytest.raises(ValueError, match="num_channels"):
        run(FocalNetModel(config).eval(), torch.randn(2, 3, 16, 16))


@pytest.fixture(scope="module")
def odd_models():
    torch.manual_seed(0)
    config = make_config(out_features=["stem", "stage1", "stage2"])
    return [cls(config).eval() for cls in ALL_CLASSES]


@pytest.mark.parametrize(("height", "width"), [(17, 23), (23, 17), (5, 9), (33, 1)])
def test_odd_sizes_every_class(odd_models, height, width):
    # patch 4 pads up: 17x23 -> 5x6 stem grid -> 3x3 after the downsample
    model, classifier, mim, backbone = odd_models
    grid = (-(-height // 4), -(-width // 4))
    last = (-(-grid[0] // 2), -(-grid[1] // 2))
    pixels = torch.randn(2, 3, height, width)

    out = run(model, pixels)
    assert out.last_hidden_state.shape == (2, last[0] * last[1], 32)
    assert torch.isfinite(out.last_hidden_state).all()

    logits = run(classifier, pixels).logits
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()

    mask = torch.zeros(2, grid[0] * grid[1], dtype=torch.bool)
    mask[:, ::3] = True
    out = run(mim, pixels, bool_masked_pos=mask)
    assert out.reconstruction.shape == (2, 3, height, width)
    assert torch.isfinite(out.loss)

    maps = run(backbone, pixels).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, *grid), (2, 16, *grid), (2, 32, *last)]


def test_odd_size_matches_transformers_shapes():
    import transformers

    kwargs = dict(embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], num_labels=3)
    pixels = torch.randn(1, 3, 17, 23)
    ours = run(FocalNetModel(FocalNetConfig(**kwargs)).eval(), pixels, output_hidden_states=True)
    theirs = run(
        transformers.FocalNetModel(transformers.FocalNetConfig(**kwargs)).eval(), pixels, output_hidden_states=True
    )
    assert ours.last_hidden_state.shape == theirs.last_hidden_state.shape
    assert [h.shape for h in ours.reshaped_hidden_states] == [h.shape for h in theirs.reshaped_hidden_states]
