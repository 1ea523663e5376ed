"""`FocalNetConfig`: defaults, validation, (de)serialisation, HF interchange and presets."""

from __future__ import annotations

import json
import math

import pytest
import transformers

import focalnet
from focalnet import FocalNetConfig

# SPEC section 2, field by field.
SPEC_DEFAULTS = {
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
    "embed_dim": 96,
    "use_conv_embed": False,
    "hidden_sizes": [192, 384, 768, 768],
    "depths": [2, 2, 6, 2],
    "focal_levels": [2, 2, 2, 2],
    "focal_windows": [3, 3, 3, 3],
    "hidden_act": "gelu",
    "mlp_ratio": 4.0,
    "hidden_dropout_prob": 0.0,
    "drop_path_rate": 0.1,
    "use_layerscale": False,
    "layerscale_value": 1e-4,
    "use_post_layernorm": False,
    "use_post_layernorm_in_modulation": False,
    "normalize_modulator": False,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "encoder_stride": 32,
    "out_features": ["stage4"],
    "out_indices": [4],
    "num_labels": 2,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "problem_type": None,
}

# Fields of the HF config that are also ours; compared as attributes.
SHARED_FIELDS = [*SPEC_DEFAULTS, "stage_names", "model_type"]

PRESET_NAMES = [
    "focalnet-tiny",
    "focalnet-tiny-lrf",
    "focalnet-small",
    "focalnet-small-lrf",
    "focalnet-base",
    "focalnet-base-lrf",
    "focalnet-large-lrf-fl3",
    "focalnet-large-lrf-fl4",
    "focalnet-xlarge-lrf-fl3",
    "focalnet-xlarge-lrf-fl4",
    "focalnet-huge-fl3",
    "focalnet-huge-fl4",
    "focalnet-tiny-iso",
    "focalnet-small-iso",
    "focalnet-base-iso",
]


def nondefault_config() -> FocalNetConfig:
    return FocalNetConfig(
        image_size=192,
        embed_dim=32,
        depths=[1, 2, 1],
        focal_levels=[3, 3, 3],
        focal_windows=[5, 5, 5],
        hidden_sizes=[64, 128, 128],
        mlp_ratio=3.0,
        hidden_dropout_prob=0.1,
        drop_path_rate=0.2,
        use_layerscale=True,
        layerscale_value=1e-3,
        use_post_layernorm=True,
        use_post_layernorm_in_modulation=True,
        normalize_modulator=True,
        layer_norm_eps=1e-6,
        encoder_stride=16,
        out_features=["stem", "stage2"],
        id2label={0: "cat", 1: "dog", 2: "bird"},
        problem_type="single_label_classification",
    )


def _field(config, name):
    value = getattr(config, name)
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------------------------
# defaults


@pytest.mark.parametrize("field", list(SPEC_DEFAULTS))
def test_default_matches_spec(field):
    assert _field(FocalNetConfig(), field) == SPEC_DEFAULTS[field]


@pytest.mark.parametrize("field", SHARED_FIELDS)
def test_default_matches_transformers(field):
    ours = _field(FocalNetConfig(), field)
    theirs = _field(transformers.FocalNetConfig(), field)
    assert ours == theirs


def test_model_type_and_stage_names():
    config = FocalNetConfig()
    assert config.model_type == "focalnet"
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.to_dict()["model_type"] == "focalnet"


# --------------------------------------------------------------------------------------------
# validation

INVALID = [
    # per-stage lists
    ({"depths": [2, 2, 6], "focal_levels": [2, 2, 2, 2], "focal_windows": [3, 3, 3, 3]}, "depths"),
    ({"depths": [2, 2], "focal_levels": [2, 2, 2], "focal_windows": [3, 3]}, "focal_levels"),
    ({"depths": [2, 2], "focal_levels": [2, 2], "focal_windows": [3]}, "focal_windows"),
    ({"depths": [], "focal_levels": [], "focal_windows": []}, "depths"),
    ({"depths": []}, "depths"),
    ({"depths": [2, 0, 6, 2]}, "depths"),
    ({"depths": [2, -1, 6, 2]}, "depths"),
    ({"focal_levels": [2, 0, 2, 2]}, "focal_levels"),
    ({"focal_levels": [2, 2, -2, 2]}, "focal_levels"),
    ({"focal_windows": [3, 4, 3, 3]}, "focal_windows"),
    ({"focal_windows": [2, 2, 2, 2]}, "focal_windows"),
    ({"focal_windows": [3, 3, 0, 3]}, "focal_windows"),
    # positive integers
    ({"embed_dim": 0}, "embed_dim"),
    ({"embed_dim": -96}, "embed_dim"),
    ({"embed_dim": 96.0}, "embed_dim"),
    ({"embed_dim": True}, "embed_dim"),
    ({"patch_size": 0}, "patch_size"),
    ({"patch_size": -4}, "patch_size"),
    ({"patch_size": (4, 0)}, "patch_size"),
    ({"num_channels": 0}, "num_channels"),
    ({"num_channels": -3}, "num_channels"),
    ({"encoder_stride": 0}, "encoder_stride"),
    ({"encoder_stride": -32}, "encoder_stride"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": -224}, "image_size"),
    ({"image_size": (224, 0)}, "image_size"),
    # rates and numbers
    ({"hidden_dropout_prob": -0.1}, "hidden_dropout_prob"),
    ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"hidden_dropout_prob": math.nan}, "hidden_dropout_prob"),
    ({"hidden_dropout_prob": math.inf}, "hidden_dropout_prob"),
    ({"drop_path_rate": -0.1}, "drop_path_rate"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"drop_path_rate": math.nan}, "drop_path_rate"),
    ({"drop_path_rate": -math.inf}, "drop_path_rate"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ({"layer_norm_eps": -1e-5}, "layer_norm_eps"),
    ({"layer_norm_eps": math.nan}, "layer_norm_eps"),
    ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ({"mlp_ratio": -4.0}, "mlp_ratio"),
    ({"mlp_ratio": math.inf}, "mlp_ratio"),
    # choices
    ({"hidden_act": "gelu_fancy"}, "hidden_act"),
    ({"problem_type": "classification"}, "problem_type"),
    # backbone outputs
    ({"out_features": ["stage5"]}, "out_features"),
    ({"depths": [1, 1], "focal_levels": [2, 2], "focal_windows": [3, 3], "out_features": ["stage3"]}, "out_features"),
    ({"out_indices": [5]}, "out_indices"),
    ({"out_indices": [0, 7]}, "out_indices"),
    ({"out_features": ["stage1", "stage3"], "out_indices": [1, 2]}, "out_features.*out_indices|disagree"),
    ({"out_features": ["stage2"], "out_indices": [3]}, "out_features.*out_indices|disagree"),
    # stem
    ({"use_conv_embed": True, "patch_size": 16}, "patch_size"),
    ({"use_conv_embed": True, "patch_size": 2}, "patch_size"),
    # labels
    ({"num_labels": -1}, "num_labels"),
    ({"num_labels": 3, "id2label": {0: "a", 1: "b"}}, "num_labels"),
    ({"num_labels": 1, "id2label": {0: "a", 1: "b"}}, "num_labels"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID, ids=[repr(k) for k, _ in INVALID])
def test_invalid_config_raises_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FocalNetConfig(**kwargs)


def test_valid_edge_values_accepted():
    config = FocalNetConfig(
        hidden_dropout_prob=0.0,
        drop_path_rate=0.999,
        num_labels=0,
        use_conv_embed=True,
        patch_size=4,
        depths=[1],
        focal_levels=[1],
        focal_windows=[1],
    )
    assert config.num_labels == 0
    assert config.id2label == {}
    assert config.stage_names == ["stem", "stage1"]
    assert config.out_features == ["stage1"]


def test_invalid_config_through_from_dict():
    data = FocalNetConfig().to_dict()
    data["focal_windows"] = [3, 3, 4, 3]
    with pytest.raises(ValueError, match="focal_windows"):
        FocalNetConfig.from_dict(data)


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("make", [FocalNetConfig, nondefault_config], ids=["default", "nondefault"])
def test_dict_round_trip(make):
    config = make()
    again = FocalNetConfig.from_dict(config.to_dict())
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert again.id2label == config.id2label
    assert all(isinstance(k, int) for k in again.id2label)


@pytest.mark.parametrize("make", [FocalNetConfig, nondefault_config], ids=["default", "nondefault"])
def test_json_file_round_trip(make, tmp_path):
    config = make()
    path = tmp_path / "sub" / "cfg.json"
    config.to_json_file(path)
    data = json.loads(path.read_text())
    assert data["model_type"] == "focalnet"
    assert data["embed_dim"] == config.embed_dim
    again = FocalNetConfig.from_json_file(path)
    assert again == config


@pytest.mark.parametrize("make", [FocalNetConfig, nondefault_config], ids=["default", "nondefault"])
def test_save_pretrained_round_trip(make, tmp_path):
    config = make()
    config.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    again = FocalNetConfig.from_pretrained(tmp_path / "model")
    assert again == config
    assert again.out_features == config.out_features
    assert again.out_indices == config.out_indices
    assert again.problem_type == config.problem_type


def test_equality_sees_differences():
    assert FocalNetConfig() == FocalNetConfig()
    assert FocalNetConfig() != FocalNetConfig(embed_dim=64)
    assert FocalNetConfig() != FocalNetConfig(num_labels=3)
    assert FocalNetConfig() != FocalNetConfig(out_indices=[1])


def test_nondefault_fields_survive_round_trip(tmp_path):
    config = nondefault_config()
    config.save_pretrained(tmp_path)
    again = FocalNetConfig.from_pretrained(tmp_path)
    assert again.depths == [1, 2, 1]
    assert again.focal_windows == [5, 5, 5]
    assert again.use_post_layernorm_in_modulation is True
    assert again.normalize_modulator is True
    assert again.layer_norm_eps == 1e-6
    assert again.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert again.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert again.out_features == ["stem", "stage2"]
    assert again.out_indices == [0, 2]


# --------------------------------------------------------------------------------------------
# interchange with transformers


@pytest.fixture(scope="module")
def hf_22k_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf22k")
    hf = transformers.FocalNetConfig(
        embed_dim=64,
        depths=[1, 1, 3, 1],
        use_layerscale=True,
        use_post_layernorm=True,
        focal_levels=[3, 3, 3, 3],
        out_features=["stage1", "stage3"],
        num_labels=21842,
        id2label={i: f"class_{i}" for i in range(21842)},
    )
    hf.architectures = ["FocalNetForImageClassification"]
    hf.save_pretrained(directory)
    return directory, hf


def test_transformers_config_loads(hf_22k_dir):
    directory, hf = hf_22k_dir
    raw = json.loads((directory / "config.json").read_text())
    assert "architectures" in raw and "transformers_version" in raw
    config = FocalNetConfig.from_pretrained(directory)
    for name in SHARED_FIELDS:
        if name != "label2id":  # transformers 5 writes "label2id": null when only id2label was given
            assert _field(config, name) == _field(hf, name), name
    assert config.embed_dim == 64
    assert config.depths == [1, 1, 3, 1]
    assert config.focal_levels == [3, 3, 3, 3]
    assert config.use_layerscale is True
    assert config.use_post_layernorm is True
    assert config.out_features == ["stage1", "stage3"]
    assert config.out_indices == [1, 3]
    assert config.num_labels == 21842
    assert len(config.id2label) == 21842
    assert all(isinstance(k, int) for k in config.id2label)
    assert config.id2label[21841] == "class_21841"
    assert config.label2id["class_5"] == 5


def test_transformers_unknown_keys_kept_and_written_back(hf_22k_dir, tmp_path):
    directory, _ = hf_22k_dir
    raw = json.loads((directory / "config.json").read_text())
    config = FocalNetConfig.from_pretrained(directory)
    assert config.architectures == ["FocalNetForImageClassification"]
    assert config.transformers_version == raw["transformers_version"]
    data = config.to_dict()
    assert data["architectures"] == ["FocalNetForImageClassification"]
    assert data["transformers_version"] == raw["transformers_version"]
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["FocalNetForImageClassification"]
    assert written["transformers_version"] == raw["transformers_version"]
    assert len(written["id2label"]) == 21842
    assert FocalNetConfig.from_pretrained(tmp_path) == config


def test_our_config_loads_in_transformers(tmp_path):
    config = nondefault_config()
    config.save_pretrained(tmp_path)
    hf = transformers.FocalNetConfig.from_pretrained(tmp_path)
    for name in SHARED_FIELDS:
        assert _field(hf, name) == _field(config, name), name
    assert hf.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert all(isinstance(k, int) for k in hf.id2label)
    assert hf.num_labels == 3
    assert hf.out_features == ["stem", "stage2"]
    assert hf.out_indices == [0, 2]
    assert hf.depths == [1, 2, 1]
    assert hf.normalize_modulator is True


def test_our_default_config_loads_in_transformers(tmp_path):
    FocalNetConfig().save_pretrained(tmp_path)
    hf = transformers.FocalNetConfig.from_pretrained(tmp_path)
    for name in SHARED_FIELDS:
        assert _field(hf, name) == _field(transformers.FocalNetConfig(), name), name


# --------------------------------------------------------------------------------------------
# bad files


def test_other_model_type_rejected(tmp_path):
    data = FocalNetConfig().to_dict()
    data["model_type"] = "swin"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="swin"):
        FocalNetConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="swin"):
        FocalNetConfig.from_dict(data)


def test_damaged_config_names_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "focalnet", "embed_dim": 9')
    with pytest.raises(ValueError, match=r"config\.json"):
        FocalNetConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json"):
        FocalNetConfig.from_json_file(path)


def test_non_object_json_rejected(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"config\.json"):
        FocalNetConfig.from_pretrained(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        FocalNetConfig.from_pretrained(tmp_path / "does-not-exist")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        FocalNetConfig.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------
# overrides


def test_from_pretrained_num_labels_override(hf_22k_dir):
    directory, _ = hf_22k_dir
    config = FocalNetConfig.from_pretrained(directory, num_labels=5)
    assert config.num_labels == 5
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert config.label2id == {f"LABEL_{i}": i for i in range(5)}
    assert config.embed_dim == 64  # the rest of the file still applies
    assert config.out_features == ["stage1", "stage3"]


def test_from_pretrained_field_override(tmp_path):
    nondefault_config().save_pretrained(tmp_path)
    config = FocalNetConfig.from_pretrained(tmp_path, drop_path_rate=0.0)
    assert config.drop_path_rate == 0.0
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"}


def test_num_labels_setter_rebuilds_labels():
    config = FocalNetConfig(id2label={0: "a", 1: "b", 2: "c"})
    config.num_labels = 4
    assert config.num_labels == 4
    assert config.id2label == {i: f"LABEL_{i}" for i in range(4)}


# --------------------------------------------------------------------------------------------
# presets


def test_list_presets_exact():
    assert focalnet.list_presets() == PRESET_NAMES


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_builds_a_valid_config(name):
    config = FocalNetConfig.from_preset(name)
    assert isinstance(config, FocalNetConfig)
    n = config.num_stages
    assert len(config.depths) == len(config.focal_levels) == len(config.focal_windows) == n
    assert config.encoder_stride == config.patch_size * 2 ** (n - 1)
    assert config.out_features == [f"stage{n}"]
    assert FocalNetConfig.from_dict(config.to_dict()) == config
    assert FocalNetConfig.from_pretrained(name) == config


@pytest.mark.parametrize(
    ("name", "embed", "depths", "level", "window", "num_labels"),
    [
        ("focalnet-tiny", 96, [2, 2, 6, 2], 2, 3, 1000),
        ("focalnet-tiny-lrf", 96, [2, 2, 6, 2], 3, 3, 1000),
        ("focalnet-small", 96, [2, 2, 18, 2], 2, 3, 1000),
        ("focalnet-small-lrf", 96, [2, 2, 18, 2], 3, 3, 1000),
        ("focalnet-base", 128, [2, 2, 18, 2], 2, 3, 1000),
        ("focalnet-base-lrf", 128, [2, 2, 18, 2], 3, 3, 1000),
        ("focalnet-large-lrf-fl3", 192, [2, 2, 18, 2], 3, 5, 21842),
        ("focalnet-large-lrf-fl4", 192, [2, 2, 18, 2], 4, 3, 21842),
        ("focalnet-xlarge-lrf-fl3", 256, [2, 2, 18, 2], 3, 5, 21842),
        ("focalnet-xlarge-lrf-fl4", 256, [2, 2, 18, 2], 4, 3, 21842),
        ("focalnet-huge-fl3", 352, [2, 2, 18, 2], 3, 3, 21842),
        ("focalnet-huge-fl4", 352, [2, 2, 18, 2], 4, 3, 21842),
        ("focalnet-tiny-iso", 192, [12], 3, 3, 1000),
        ("focalnet-small-iso", 384, [12], 3, 3, 1000),
        ("focalnet-base-iso", 768, [12], 3, 3, 1000),
    ],
)
def test_preset_table(name, embed, depths, level, window, num_labels):
    config = FocalNetConfig.from_preset(name)
    assert config.embed_dim == embed
    assert config.depths == depths
    assert config.focal_levels == [level] * len(depths)
    assert config.focal_windows == [window] * len(depths)
    assert config.num_labels == num_labels


@pytest.mark.parametrize(
    "name", ["focalnet-tiny", "focalnet-tiny-lrf", "focalnet-small", "focalnet-small-lrf", "focalnet-base"]
)
def test_small_presets_plain_blocks(name):
    config = FocalNetConfig.from_preset(name)
    assert config.image_size == 224
    assert config.patch_size == 4
    assert not config.use_conv_embed
    assert not config.use_post_layernorm
    assert not config.use_layerscale
    assert not config.use_post_layernorm_in_modulation
    assert not config.normalize_modulator


def test_preset_large_lrf_fl3():
    config = FocalNetConfig.from_preset("focalnet-large-lrf-fl3")
    assert config.embed_dim == 192
    assert config.focal_windows == [5, 5, 5, 5]
    assert config.use_conv_embed is True
    assert config.use_post_layernorm is True
    assert config.use_layerscale is True
    assert config.use_post_layernorm_in_modulation is False
    assert config.image_size == 384
    assert config.num_labels == 21842
    assert config.stage_widths == [192, 384, 768, 1536]


def test_preset_large_lrf_fl4_normalizes_modulator():
    assert FocalNetConfig.from_preset("focalnet-large-lrf-fl4").normalize_modulator is True
    assert FocalNetConfig.from_preset("focalnet-large-lrf-fl3").normalize_modulator is False


def test_preset_xlarge_is_256_wide():
    # HF's converter wrongly gives xlarge embed_dim 192 (SPEC 4.4)
    for name in ("focalnet-xlarge-lrf-fl3", "focalnet-xlarge-lrf-fl4"):
        config = FocalNetConfig.from_preset(name)
        assert config.embed_dim == 256
        assert config.num_features == 2048
        assert config.use_conv_embed and config.use_post_layernorm and config.use_layerscale


@pytest.mark.parametrize("name", ["focalnet-huge-fl3", "focalnet-huge-fl4"])
def test_preset_huge(name):
    config = FocalNetConfig.from_preset(name)
    assert config.embed_dim == 352
    assert config.use_post_layernorm_in_modulation is True
    assert config.use_post_layernorm is True
    assert config.use_layerscale is True
    assert config.use_conv_embed is True
    if name == "focalnet-huge-fl3":
        assert config.image_size == 224


@pytest.mark.parametrize("name", ["focalnet-tiny-iso", "focalnet-small-iso", "focalnet-base-iso"])
def test_preset_isotropic(name):
    config = FocalNetConfig.from_preset(name)
    assert config.num_stages == 1
    assert config.depths == [12]
    assert config.patch_size == 16
    assert config.encoder_stride == 16
    assert config.stage_names == ["stem", "stage1"]
    assert config.use_conv_embed is False
    assert config.use_layerscale is (name == "focalnet-base-iso")


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="focalnet-tiny") as info:
        FocalNetConfig.from_preset("focalnet-gigantic")
    message = str(info.value)
    assert "focalnet-gigantic" in message
    for name in PRESET_NAMES:
        assert name in message


def test_preset_overrides():
    config = FocalNetConfig.from_preset("focalnet-tiny", num_labels=10)
    assert config.num_labels == 10
    assert config.id2label == {i: f"LABEL_{i}" for i in range(10)}
    assert config.embed_dim == 96
    assert config.depths == [2, 2, 6, 2]
    large = FocalNetConfig.from_preset("focalnet-large-lrf-fl3", image_size=224, drop_path_rate=0.0)
    assert large.image_size == 224
    assert large.drop_path_rate == 0.0
    assert large.use_conv_embed is True


def test_preset_override_is_validated():
    with pytest.raises(ValueError, match="embed_dim"):
        FocalNetConfig.from_preset("focalnet-tiny", embed_dim=0)


# --------------------------------------------------------------------------------------------
# backbone outputs


@pytest.mark.parametrize("depths", [[2, 2, 6, 2], [1, 1], [3]])
def test_out_features_default_is_last_stage_like_hf(depths):
    levels, windows = [2] * len(depths), [3] * len(depths)
    ours = FocalNetConfig(depths=depths, focal_levels=levels, focal_windows=windows)
    hf = transformers.FocalNetConfig(depths=depths, focal_levels=levels, focal_windows=windows)
    assert ours.out_features == [f"stage{len(depths)}"]
    assert ours.out_indices == [len(depths)]
    assert ours.out_features == list(hf.out_features)
    assert ours.out_indices == list(hf.out_indices)
    assert ours.stage_names == list(hf.stage_names)


@pytest.mark.parametrize(
    ("kwargs", "features", "indices"),
    [
        ({"out_features": ["stage1", "stage3"]}, ["stage1", "stage3"], [1, 3]),
        ({"out_indices": [1, 3]}, ["stage1", "stage3"], [1, 3]),
        ({"out_indices": [0, 2, 4]}, ["stem", "stage2", "stage4"], [0, 2, 4]),
        ({"out_features": ["stem"]}, ["stem"], [0]),
        ({"out_features": ["stage2", "stage4"], "out_indices": [2, 4]}, ["stage2", "stage4"], [2, 4]),
    ],
)
def test_out_features_and_indices_derived(kwargs, features, indices):
    ours = FocalNetConfig(**kwargs)
    hf = transformers.FocalNetConfig(**kwargs)
    assert ours.out_features == features
    assert ours.out_indices == indices
    assert ours.out_features == list(hf.out_features)
    assert ours.out_indices == list(hf.out_indices)


@pytest.mark.parametrize(
    ("attribute", "value", "features", "indices"),
    [
        ("out_features", ["stage1", "stage4"], ["stage1", "stage4"], [1, 4]),
        ("out_indices", [0, 2], ["stem", "stage2"], [0, 2]),
    ],
)
def test_setting_out_features_or_indices_realigns_the_other_like_hf(attribute, value, features, indices):
    ours, hf = FocalNetConfig(), transformers.FocalNetConfig()
    setattr(ours, attribute, value)
    setattr(hf, attribute, value)
    assert (ours.out_features, ours.out_indices) == (features, indices)
    assert (ours.out_features, ours.out_indices) == (list(hf.out_features), list(hf.out_indices))
    assert FocalNetConfig.from_dict(ours.to_dict()).out_indices == indices
    with pytest.raises(ValueError, match="name no stage"):
        ours.out_features = ["stage9"]
    assert ours.out_features == features  # a refused value leaves the config as it was


def test_legacy_underscore_out_features_key():
    data = FocalNetConfig().to_dict()
    del data["out_features"], data["out_indices"]
    data["_out_features"] = ["stage2"]
    data["_out_indices"] = [2]
    config = FocalNetConfig.from_dict(data)
    assert config.out_features == ["stage2"]
    assert config.out_indices == [2]
