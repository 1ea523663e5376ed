"""`FocalNetConfig`: the architecture and head settings, read from and written to HF `config.json`."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from ._io import atomic_write, read_json_object

CONFIG_NAME = "config.json"
MODEL_TYPE = "focalnet"

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# Keys that describe the file rather than the model; recomputed on every save.
_DERIVED_KEYS = ("model_type", "stage_names")


class ConfigFile:
    """JSON (de)serialisation shared by the configs, in transformers' `config.json` layout: each config
    lists its own fields (`fields`); labels, output flags and unknown keys (`extra`) are common."""

    model_type: str
    architecture: str  # for messages: "FocalNet", "UperNet"

    def fields(self) -> dict[str, Any]:
        """This config's own fields, JSON-able."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict in transformers' `config.json` layout."""
        out = {
            "model_type": self.model_type,
            **self.fields(),
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": dict(self.label2id),
        }
        if self.output_hidden_states:
            out["output_hidden_states"] = True
        if not self.return_dict:
            out["return_dict"] = False
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def checked_dict(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
        """A copy of `config_dict`, refused if it describes another architecture."""
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"this config describes a {model_type!r} model, not {cls.architecture} "
                f"(model_type {cls.model_type!r}); use the class or library made for that architecture"
            )
        return dict(config_dict)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any):
        return cls(**merge_overrides(cls.checked_dict(config_dict), overrides))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        with atomic_write(path) as handle:
            handle.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls.from_dict(read_json_object(path))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `config.json` into `save_directory` (created if needed)."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"{save_directory} is a file; save_pretrained needs a directory")
        self.to_json_file(save_directory / CONFIG_NAME)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def copy(self):
        return self.from_dict(self.to_dict())


class FocalNetConfig(ConfigFile):
    """Configuration of a FocalNet model, field for field the one of `transformers.FocalNetConfig`.

    Stage `i` has width `embed_dim * 2**i`; `hidden_sizes` is kept only as metadata (HF's
    backbone reads it, the layers never do). Unknown keys, such as the `architectures` or
    `transformers_version` entries of hub files, are kept as attributes and written back.

    Extensions over HF: `use_backbone_layernorm` adds a LayerNorm to each `FocalNetBackbone`
    output (as the original detection backbone does).
    """

    model_type = MODEL_TYPE
    architecture = "FocalNet"

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        num_channels: int = 3,
        embed_dim: int = 96,
        use_conv_embed: bool = False,
        hidden_sizes: list[int] | tuple[int, ...] | None = None,
        depths: list[int] | tuple[int, ...] = (2, 2, 6, 2),
        focal_levels: list[int] | tuple[int, ...] | None = None,
        focal_windows: list[int] | tuple[int, ...] | None = None,
        hidden_act: str = "gelu",
        mlp_ratio: float = 4.0,
        hidden_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.1,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_post_layernorm: bool = False,
        use_post_layernorm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        encoder_stride: int = 32,
        use_backbone_layernorm: bool = False,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        self._out_features: list[str] = []
        self._out_indices: list[int] = []
        self.image_size = _int_or_pair(image_size, "image_size")
        self.patch_size = _int_or_pair(patch_size, "patch_size")
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.use_conv_embed = use_conv_embed
        self.depths = list(depths)
        # per-stage lists left out follow the number of stages (HF's defaults for four)
        self.focal_levels = list(focal_levels) if focal_levels is not None else [2] * len(self.depths)
        self.focal_windows = list(focal_windows) if focal_windows is not None else [3] * len(self.depths)
        if hidden_sizes is None:  # HF's metadata convention: widths after each stage's downsample
            widths = [embed_dim * 2**i for i in range(len(self.depths))]
            hidden_sizes = widths[1:] + widths[-1:]
        self.hidden_sizes = list(hidden_sizes)
        self.hidden_act = hidden_act
        self.mlp_ratio = mlp_ratio
        self.hidden_dropout_prob = hidden_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.use_layerscale = use_layerscale
        self.layerscale_value = layerscale_value
        self.use_post_layernorm = use_post_layernorm
        self.use_post_layernorm_in_modulation = use_post_layernorm_in_modulation
        self.normalize_modulator = normalize_modulator
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.encoder_stride = encoder_stride
        self.use_backbone_layernorm = use_backbone_layernorm
        self.problem_type = problem_type
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        self._set_labels(num_labels, id2label, label2id)
        # older hub files spell the backbone outputs with a leading underscore
        out_features = out_features if out_features is not None else kwargs.pop("_out_features", None)
        out_indices = out_indices if out_indices is not None else kwargs.pop("_out_indices", None)
        for key in _DERIVED_KEYS:
            kwargs.pop(key, None)
        self.extra = dict(kwargs)  # unknown keys from hub files, written back unchanged
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()
        self._out_features, self._out_indices = self._resolve_out_features(out_features, out_indices)

    # ----------------------------------------------------------------------------------------
    # derived properties
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_stages + 1)]

    @property
    def out_features(self) -> list[str]:
        """Names of the stages a backbone returns; setting it re-derives `out_indices` (as in HF)."""
        return self._out_features

    @out_features.setter
    def out_features(self, features: list[str] | None) -> None:
        self._out_features, self._out_indices = self._resolve_out_features(features, None)

    @property
    def out_indices(self) -> list[int]:
        """Indices into `stage_names` of the stages a backbone returns; setting it re-derives `out_features`."""
        return self._out_indices

    @out_indices.setter
    def out_indices(self, indices: list[int] | None) -> None:
        self._out_features, self._out_indices = self._resolve_out_features(None, indices)

    @property
    def stage_widths(self) -> list[int]:
        """Real channel width of each stage (never read from `hidden_sizes`)."""
        return [self.embed_dim * 2**i for i in range(self.num_stages)]

    @property
    def num_features(self) -> int:
        return self.stage_widths[-1]

    @property
    def total_stride(self) -> int:
        """Input pixels per output token along each side, after the last stage."""
        return self.patch_size_2d[0] * 2 ** (self.num_stages - 1)

    @property
    def patch_size_2d(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)

    @property
    def image_size_2d(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        self._set_labels(value, None, None)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    # ----------------------------------------------------------------------------------------
    # validation
    def validate(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        _check_positive_int("num_channels", self.num_channels)
        _check_positive_int("embed_dim", self.embed_dim)
        _check_positive_int("encoder_stride", self.encoder_stride)
        for name in ("image_size", "patch_size"):
            for value in getattr(self, f"{name}_2d"):
                _check_positive_int(name, value)
        per_stage = {"depths": self.depths, "focal_levels": self.focal_levels, "focal_windows": self.focal_windows}
        if not self.depths:
            raise ValueError("depths must list at least one stage, e.g. depths=[2, 2, 6, 2]")
        lengths = {name: len(values) for name, values in per_stage.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"depths, focal_levels and focal_windows need one entry per stage, got lengths {lengths}; "
                "give the three lists the same length"
            )
        for name, values in per_stage.items():
            for value in values:
                _check_positive_int(f"every entry of {name}", value)
        for window in self.focal_windows:
            if window % 2 == 0:
                raise ValueError(
                    "focal_windows must be odd so the depthwise kernels keep the feature size, "
                    f"got {self.focal_windows}"
                )
        if self.use_conv_embed and self.patch_size_2d != (4, 4):
            raise ValueError(
                "use_conv_embed=True uses a 7x7 stride-4 stem, so patch_size must be 4, "
                f"got {self.patch_size}; set patch_size=4 or use_conv_embed=False"
            )
        _check_number("mlp_ratio", self.mlp_ratio, low=0.0, low_open=True)
        _check_number("hidden_dropout_prob", self.hidden_dropout_prob, low=0.0, high=1.0)
        _check_number("drop_path_rate", self.drop_path_rate, low=0.0, high=1.0)
        _check_number("layer_norm_eps", self.layer_norm_eps, low=0.0, low_open=True)
        _check_number("initializer_range", self.initializer_range, low=0.0)
        _check_number("layerscale_value", self.layerscale_value)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be None or one of {PROBLEM_TYPES}, got {self.problem_type!r}")

    def _resolve_out_features(
        self, out_features: list[str] | None, out_indices: list[int] | None
    ) -> tuple[list[str], list[int]]:
        """Same defaults as HF: nothing given means the last stage; either one determines the other."""
        names = self.stage_names
        if out_features is None and out_indices is None:
            return [names[-1]], [len(names) - 1]
        if out_indices is not None:
            out_indices = list(out_indices)
            for index in out_indices:
                if not isinstance(index, int) or not -len(names) <= index < len(names):
                    raise ValueError(f"out_indices entry {index!r} is not a stage index; valid: 0..{len(names) - 1}")
            from_indices = [names[i] for i in out_indices]
        if out_features is not None:
            out_features = list(out_features)
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"out_features {unknown} name no stage of this model; choose from {names}")
            if out_indices is not None and from_indices != out_features:
                raise ValueError(f"out_features {out_features} and out_indices {out_indices} disagree; give only one")
        features = out_features if out_features is not None else from_indices
        if len(set(features)) != len(features) or [names.index(f) for f in features] != sorted(
            names.index(f) for f in features
        ):
            raise ValueError(f"out_features must be distinct and in stage order, got {features}")
        return features, [names.index(f) for f in features]

    def _set_labels(self, num_labels: int | None, id2label: dict | None, label2id: dict | None) -> None:
        self.id2label, self.label2id = label_maps(num_labels, id2label, label2id)

    # ----------------------------------------------------------------------------------------
    # (de)serialisation
    def fields(self) -> dict[str, Any]:
        return {
            "image_size": _plain(self.image_size),
            "patch_size": _plain(self.patch_size),
            "num_channels": self.num_channels,
            "embed_dim": self.embed_dim,
            "use_conv_embed": self.use_conv_embed,
            "hidden_sizes": list(self.hidden_sizes),
            "depths": list(self.depths),
            "focal_levels": list(self.focal_levels),
            "focal_windows": list(self.focal_windows),
            "hidden_act": self.hidden_act,
            "mlp_ratio": self.mlp_ratio,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "drop_path_rate": self.drop_path_rate,
            "use_layerscale": self.use_layerscale,
            "layerscale_value": self.layerscale_value,
            "use_post_layernorm": self.use_post_layernorm,
            "use_post_layernorm_in_modulation": self.use_post_layernorm_in_modulation,
            "normalize_modulator": self.normalize_modulator,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "encoder_stride": self.encoder_stride,
            "use_backbone_layernorm": self.use_backbone_layernorm,
            "stage_names": self.stage_names,
            "out_features": list(self.out_features),
            "out_indices": list(self.out_indices),
            "problem_type": self.problem_type,
        }

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> FocalNetConfig:
        data = cls.checked_dict(config_dict)
        return cls(**merge_overrides(data, overrides, (("out_features", "out_indices"),)))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **overrides: Any) -> FocalNetConfig:
        """Read a config from a directory holding `config.json`, a JSON file, or a preset name."""
        path = Path(source)
        if path.is_dir():
            path = path / CONFIG_NAME
            if not path.is_file():
                raise FileNotFoundError(f"{source} has no {CONFIG_NAME}")
        elif not path.is_file():
            from .presets import PRESETS

            if str(source) in PRESETS:
                return cls.from_preset(str(source), **overrides)
            raise FileNotFoundError(f"{source} is neither a directory with {CONFIG_NAME}, a JSON file nor a preset")
        return cls.from_dict(cls.from_json_file(path).to_dict(), **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FocalNetConfig:
        """Config of an official variant (see `focalnet.list_presets()`), with optional overrides."""
        from .presets import preset_config_dict

        return cls.from_dict(preset_config_dict(name), **overrides)


def _int_or_pair(value: Any, name: str) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
        return (value[0], value[1])
    return value


def _plain(value: int | tuple[int, int]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value >= high:
        raise ValueError(f"{name} must be < {high}, got {value!r}")


def merge_overrides(
    data: dict[str, Any], overrides: dict[str, Any], pairs: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """`data` updated with `overrides`, where overriding one of two derived fields drops the stored
    other: each of `pairs`, `num_labels` (id2label, label2id) and `id2label` (label2id)."""
    data = dict(data)
    partners = [pair for first, second in pairs for pair in ((first, (second,)), (second, (first,)))]
    if overrides.get("num_labels") is not None:
        partners.append(("num_labels", ("id2label", "label2id")))
    partners.append(("id2label", ("label2id",)))
    for given, derived in partners:
        if given in overrides:
            for name in derived:
                if name not in overrides:
                    data.pop(name, None)
    data.update(overrides)
    return data


def label_maps(
    num_labels: int | None, id2label: dict | None, label2id: dict | None
) -> tuple[dict[int, str], dict[str, int]]:
    """HF's label fields made consistent: `id2label` wins, else `num_labels` names LABEL_0.. (2 by default)."""
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError("id2label keys must be the integers 0..num_labels-1")
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} entries")
    else:
        if num_labels is None:
            num_labels = 2  # HF's default, so configs without labels build the same head
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 0:
            raise ValueError(f"num_labels must be a non-negative integer, got {num_labels!r}")
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if label2id is not None:
        return id2label, {str(k): int(v) for k, v in label2id.items()}
    return id2label, {name: i for i, name in id2label.items()}
