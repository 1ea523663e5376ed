"""UperNet on FocalNet: config, heads against transformers' UperNetHead / UperNetFCNHead, the full
model's outputs, loss and gradients, the backbone from other checkpoints, save / load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from focalnet import (
    CheckpointError,
    FocalNetConfig,
    FocalNetForImageClassification,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from focalnet.segmentation import UperNetFCNHead, UperNetHead

pytestmark = pytest.mark.numerics

transformers_upernet = pytest.importorskip("transformers.models.upernet.modeling_upernet")
transformers = pytest.importorskip("transformers")

SMALL_BACKBONE = {"embed_dim": 16, "depths": [1, 1, 1, 1], "drop_path_rate": 0.0}
SMALL_HEADS = {"hidden_size": 32, "auxiliary_channels": 16, "classifier_dropout_prob": 0.0}


def small_model(num_labels: int = 5, **head) -> UperNetForSemanticSegmentation:
    settings = {**SMALL_HEADS, **head}
    return UperNetForSemanticSegmentation.from_backbone(
        "focalnet-tiny", num_labels=num_labels, backbone_overrides=SMALL_BACKBONE, **settings
    )


def randomize_heads_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics, so eval-mode BatchNorm is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.endswith("batch_norm.weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            else:
                tensor.copy_(0.2 * noise)


# ------------------------------------------------------------------------------------------------
# config
def test_config_defaults_are_transformers() -> None:
    ours, theirs = UperNetConfig(), transformers.UperNetConfig()
    for field in (
        "hidden_size",
        "initializer_range",
        "use_auxiliary_head",
        "auxiliary_loss_weight",
        "auxiliary_in_channels",
        "auxiliary_channels",
        "auxiliary_num_convs",
        "auxiliary_concat_input",
        "loss_ignore_index",
        "num_labels",
    ):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert list(ours.pool_scales) == list(theirs.pool_scales) == [1, 2, 3, 6]
    backbone = ours.backbone_config
    assert backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert backbone.focal_windows == [9, 9, 9, 9] and backbone.use_backbone_layernorm
    assert ours.in_channels == [96, 192, 384, 768]


def test_config_json_round_trip(tmp_path: Path) -> None:
    config = UperNetConfig(
        backbone_config=FocalNetConfig(
            embed_dim=32, depths=[1, 1, 2, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
        ),
        hidden_size=64,
        pool_scales=[1, 3],
        auxiliary_num_convs=2,
        auxiliary_concat_input=True,
        id2label={0: "sky", 1: "road", 2: "car"},
    )
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "upernet" and data["backbone_config"]["model_type"] == "focalnet"
    again = UperNetConfig.from_pretrained(tmp_path)
    assert again == config and again.num_labels == 3 and again.label2id == {"sky": 0, "road": 1, "car": 2}
    assert again.backbone_config == config.backbone_config
    # transformers reads the same fields from our file
    theirs = transformers.UperNetConfig.from_dict({k: v for k, v in data.items() if k != "backbone_config"})
    assert theirs.hidden_size == 64 and list(theirs.pool_scales) == [1, 3] and theirs.auxiliary_concat_input


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"pool_scales": []}, "pool_scales"),
        ({"pool_scales": [1, 0]}, "pool_scales"),
        ({"auxiliary_loss_weight": -1.0}, "auxiliary_loss_weight"),
        ({"auxiliary_num_convs": -1}, "auxiliary_num_convs"),
        ({"auxiliary_in_channels": 100}, "auxiliary_in_channels=100 but backbone output stage3 is 384 wide"),
        ({"classifier_dropout_prob": 1.0}, "classifier_dropout_prob"),
        ({"loss_ignore_index": 2.5}, "loss_ignore_index"),
        ({"num_labels": 0}, "num_labels >= 1"),
        ({"backbone_config": {"out_features": ["stage3", "stage4"]}}, "auxiliary head reads backbone output 2"),
        ({"backbone_config": 3}, "FocalNetConfig"),
    ],
)
def test_config_rejects_bad_values(fields: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        UperNetConfig(**fields)


# ------------------------------------------------------------------------------------------------
# heads = transformers' heads
HEAD_CASES = [
    {"pool_scales": [1, 2, 3, 6], "hidden_size": 32, "auxiliary_num_convs": 1, "auxiliary_concat_input": False},
    {"pool_scales": [1, 3], "hidden_size": 24, "auxiliary_num_convs": 2, "auxiliary_concat_input": True},
    {"pool_scales": [2, 4, 8], "hidden_size": 40, "auxiliary_num_convs": 1, "auxiliary_concat_input": True},
]


@pytest.mark.parametrize("case", HEAD_CASES)
def test_heads_equal_transformers(case: dict) -> None:
    in_channels = [16, 32, 64, 128]
    backbone = FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"])
    ours_config = UperNetConfig(backbone_config=backbone, num_labels=7, auxiliary_channels=20, **case)
    theirs_config = transformers.UperNetConfig(num_labels=7, auxiliary_channels=20, **case)
    decode, auxiliary = UperNetHead(ours_config, in_channels), UperNetFCNHead(ours_config, in_channels)
    their_decode = transformers_upernet.UperNetHead(theirs_config, in_channels)
    their_auxiliary = transformers_upernet.UperNetFCNHead(theirs_config, in_channels)
    for ours, theirs in ((decode, their_decode), (auxiliary, their_auxiliary)):
        randomize_heads_(ours)
        theirs.load_state_dict(ours.state_dict(), strict=True)  # same keys, same shapes
        ours.eval(), theirs.eval()
    maps = [torch.randn(2, width, 37 // 2**i + 1, 53 // 2**i + 1) for i, width in enumerate(in_channels)]
    with torch.no_grad():
        assert_close(decode(maps), their_decode(maps), 1e-5, "decode head")
        assert_close(auxiliary(maps), their_auxiliary(maps), 1e-5, "auxiliary head")
    assert decode(maps).shape == (2, 7, 38, 54)


def test_model_keys_are_transformers_head_keys() -> None:
    model = small_model()
    config = transformers.UperNetConfig(num_labels=5, hidden_size=32, auxiliary_channels=16)
    channels = model.config.in_channels
    expected = {f"decode_head.{k}" for k in transformers_upernet.UperNetHead(config, channels).state_dict()}
    expected |= {f"auxiliary_head.{k}" for k in transformers_upernet.UperNetFCNHead(config, channels).state_dict()}
    ours = {k for k in model.state_dict() if not k.startswith("backbone.")}
    assert ours == expected
    assert any(k.startswith("backbone.hidden_states_norms.stage1.") for k in model.state_dict())


# ------------------------------------------------------------------------------------------------
# the full model
@pytest.mark.parametrize("size", [(64, 64), (50, 77), (97, 45)])
def test_logits_at_input_size(size: tuple[int, int]) -> None:
    model = small_model().eval()
    output = model(torch.randn(2, 3, *size))
    assert output.logits.shape == (2, 5, *size) and output.loss is None
    assert torch.isfinite(output.logits).all()


def test_loss_is_main_plus_weighted_auxiliary() -> None:
    model = small_model(auxiliary_loss_weight=0.4).eval()
    randomize_heads_(model.decode_head, 1)
    randomize_heads_(model.auxiliary_head, 2)
    pixels = torch.randn(2, 3, 45, 70)
    labels = torch.randint(0, 5, (2, 45, 70))
    labels[0, :20] = 255
    labels[1, :, :9] = 255
    output = model(pixels, labels=labels)
    # with gradients on, as the call above: the same (autograd) path, so only the loss's composition differs
    maps = model.backbone(pixels).feature_maps
    main = F.interpolate(model.decode_head(maps), size=(45, 70), mode="bilinear", align_corners=False).detach()
    auxiliary = F.interpolate(model.auxiliary_head(maps), size=(45, 70), mode="bilinear", align_corners=False).detach()
    valid = labels != 255
    by_hand = [
        -torch.log_softmax(logits, 1).gather(1, labels.clamp(max=4)[:, None])[:, 0][valid].mean()
        for logits in (main, auxiliary)
    ]
    assert_close(output.logits, main, 1e-6, "logits")
    assert_close(output.loss, by_hand[0] + 0.4 * by_hand[1], 1e-5, "loss")
    without = small_model(use_auxiliary_head=False).eval()
    assert without.auxiliary_head is None
    assert_close(
        without(pixels, labels=labels).loss, F.cross_entropy(without(pixels).logits, labels, ignore_index=255), 1e-6
    )


def test_all_ignored_labels_give_zero_loss_not_nan() -> None:
    model = small_model().train()
    labels = torch.full((2, 32, 32), 255)
    loss = model(torch.randn(2, 3, 32, 32), labels=labels).loss
    assert loss.item() == 0.0
    loss.backward()


def test_bad_labels_are_named() -> None:
    model = small_model().eval()
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        model(torch.randn(1, 3, 32, 32), labels=torch.full((1, 32, 32), 7))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = small_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing == checkpointing
        torch.manual_seed(1)
        pixels, labels = torch.randn(2, 3, 48, 40), torch.randint(0, 5, (2, 48, 40))
        model(pixels, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    assert any(name.startswith("backbone.focalnet.embeddings") for name in plain)
    for name in plain:
        assert_close(checkpointed[name], plain[name], 1e-5, name)


def test_hidden_states_and_tuple_output() -> None:
    model = small_model().eval()
    pixels = torch.randn(1, 3, 64, 64)
    output = model(pixels, output_hidden_states=True)
    assert output.hidden_states is not None and len(output.hidden_states) == 5
    logits, *_ = model(pixels, return_dict=False)
    assert_close(logits, output.logits, 0.0)


# ------------------------------------------------------------------------------------------------
# backbones from other checkpoints; save and load
@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = FocalNetConfig(embed_dim=16, depths=[1, 1, 2, 1], num_labels=4)
    torch.manual_seed(3)
    classifier = FocalNetForImageClassification(config)
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    directory = tmp_path_factory.mktemp("classifier")
    classifier.save_pretrained(directory)
    return directory


def test_backbone_from_a_saved_classifier_holds_its_encoder(saved_classifier: Path) -> None:
    classifier = FocalNetForImageClassification.from_pretrained(saved_classifier)
    with pytest.warns(UserWarning, match="newly initialised: hidden_states_norms"):
        model = UperNetForSemanticSegmentation.from_backbone(
            saved_classifier, num_labels=3, backbone_overrides={"focal_windows": [3, 3, 3, 3]}
        )
    ours = model.backbone.focalnet.state_dict()
    for name, tensor in classifier.focalnet.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    # with the dense default (window 9: kernels zero-padded at the centre) the maps stay the same
    with pytest.warns(UserWarning, match="newly initialised"):
        expanded = UperNetForSemanticSegmentation.from_backbone(saved_classifier, num_labels=3)
    assert expanded.config.backbone_config.focal_windows == [9, 9, 9, 9]
    expanded.backbone.hidden_states_norms.load_state_dict(model.backbone.hidden_states_norms.state_dict())
    pixels = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        got, want = expanded.eval().backbone(pixels).feature_maps, model.eval().backbone(pixels).feature_maps
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, 1e-5, f"stage {index + 1} with expanded kernels")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = small_model(num_labels=4).eval()
    randomize_heads_(model.decode_head)
    model.config.id2label = {0: "bg", 1: "circle", 2: "square", 3: "triangle"}
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["architectures"] == ["UperNetForSemanticSegmentation"] and data["model_type"] == "upernet"
    again = UperNetForSemanticSegmentation.from_pretrained(tmp_path)
    assert not again.training and again.config.id2label[3] == "triangle"
    pixels = torch.randn(2, 3, 61, 47)
    with torch.no_grad():
        assert torch.equal(again(pixels).logits, model(pixels).logits)
    # a new label set replaces both classifiers and says so; the rest is kept
    with pytest.warns(UserWarning, match="replaced the 4-class classifiers"):
        relabelled = UperNetForSemanticSegmentation.from_pretrained(tmp_path, num_labels=6)
    assert relabelled.decode_head.classifier.out_channels == 6
    assert torch.equal(relabelled.decode_head.fpn_bottleneck.conv.weight, model.decode_head.fpn_bottleneck.conv.weight)
    # a saved UperNet's backbone for a new model
    fresh = UperNetForSemanticSegmentation.from_backbone(tmp_path, num_labels=2, hidden_size=16)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[name], tensor), name


def test_damaged_or_mismatched_checkpoints_are_named(tmp_path: Path) -> None:
    model = small_model()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["hidden_size"] = 48
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        UperNetForSemanticSegmentation.from_pretrained(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        UperNetForSemanticSegmentation.from_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        UperNetForSemanticSegmentation.from_pretrained(tmp_path / "model")
    with pytest.raises(TypeError, match="UperNetConfig"):
        UperNetForSemanticSegmentation(FocalNetConfig())


def test_original_mmsegmentation_checkpoint_loads_whole(tmp_path: Path) -> None:
    """An UperNet checkpoint of the original code (mmseg: original backbone names under `backbone.`,
    output norms norm0..3, heads with `bn` and `conv_seg`) gives the same model, heads included."""
    from focalnet.formats import hf_to_original

    model = small_model(num_labels=6, auxiliary_num_convs=2, auxiliary_concat_input=True).eval()
    randomize_heads_(model.decode_head, 1)
    randomize_heads_(model.auxiliary_head, 2)
    own = model.state_dict()
    encoder = {
        k.removeprefix("backbone."): v
        for k, v in own.items()
        if k.startswith("backbone.focalnet.") and not k.startswith("backbone.focalnet.layernorm.")
    }
    state = {f"backbone.{k}": v for k, v in hf_to_original(encoder).items()}
    for stage in range(4):
        for name in ("weight", "bias"):
            state[f"backbone.norm{stage}.{name}"] = own[f"backbone.hidden_states_norms.stage{stage + 1}.{name}"]
    for key, value in own.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            state[key.replace(".batch_norm.", ".bn.").replace(".classifier.", ".conv_seg.")] = value
    path = tmp_path / "upernet_focalnet_tiny.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": state}, path)

    loaded = UperNetForSemanticSegmentation.from_pretrained(path, use_post_layernorm=False, normalize_modulator=False)
    config = loaded.config
    assert (config.num_labels, config.hidden_size, config.auxiliary_num_convs, config.auxiliary_concat_input) == (
        6,
        32,
        2,
        True,
    )
    pixels = torch.randn(1, 3, 77, 64)
    with torch.no_grad():
        assert_close(loaded(pixels).logits, model(pixels).logits, 1e-5, "original checkpoint")
    with pytest.raises(CheckpointError, match="pooling branches"):
        UperNetForSemanticSegmentation.from_pretrained(
            path, use_post_layernorm=False, normalize_modulator=False, pool_scales=[1, 2]
        )
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("backbone.")}}, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="no UperNet decode head"):
        UperNetForSemanticSegmentation.from_pretrained(tmp_path / "backbone.pth")
