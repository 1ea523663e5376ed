"""Reading and writing checkpoints, in any of the three published layouts.

`from_pretrained(source)` accepts a directory in HF layout (`config.json` + `model.safetensors`,
`pytorch_model.bin` or a sharded index), a timm hub snapshot, a single weights file in HF,
timm or original layout (`.safetensors`, `.bin`, `.pth`; plain or under "model"/"state_dict"),
a registry name (`focalnet-tiny`) or a hub id. A checkpoint of the original detection or
segmentation code gives its backbone, with the output norms `norm0..3` as `FocalNetBackbone`'s
(`use_backbone_layernorm`). Without a `config.json` the architecture is
read from the tensors; the two flags tensors cannot show (pre- vs post-norm blocks and
`normalize_modulator`) come from explicit arguments, the registry, or an error that says
which to pass.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._io import atomic_path
from .configuration import CONFIG_NAME, FocalNetConfig
from .formats import detect_layout, split_dense_checkpoint, to_hf
from .registry import Checkpoint, architecture_signature, find_checkpoint, match_architecture

if TYPE_CHECKING:
    from .modeling import FocalNetPreTrainedModel

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
PREFIX = "focalnet."
HIDDEN_FLAGS = ("use_post_layernorm", "normalize_modulator")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


# ------------------------------------------------------------------------------------------------
# writing
def save_pretrained(
    model: FocalNetPreTrainedModel, save_directory: str | os.PathLike, safe_serialization: bool = True
) -> None:
    """`config.json` + `model.safetensors` (or `pytorch_model.bin`), each written atomically."""
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"{directory} is a file; save_pretrained needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.copy()
    config.extra["architectures"] = [type(model).__name__]
    save_state_dict(model.state_dict(), directory / (SAFETENSORS_NAME if safe_serialization else PICKLE_NAME))
    config.save_pretrained(directory)


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write tensors as safetensors (by suffix) or a plain pickle of tensors, atomically."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(state, tmp)


# ------------------------------------------------------------------------------------------------
# reading
def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a pickle loaded with `weights_only=True` (runs no code).

    Training checkpoints are unwrapped ("model" or "state_dict" entry), DDP's `module.` stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); download or save it again"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or hostile pickles
        raise CheckpointError(
            f"{path} could not be read as a PyTorch weights file ({type(err).__name__}: {err}); "
            "it may be truncated or hold more than tensors"
        ) from None
    return _unwrap(state, path)


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a valid shard index ({err})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_state_dict(index_path.parent / shard))
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(f"the shards of {index_path} lack {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    return state


def _weights_in_directory(directory: Path) -> dict[str, torch.Tensor]:
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if (directory / name).is_file():
            return load_state_dict(directory / name)
    for name in INDEX_NAMES:
        if (directory / name).is_file():
            return _load_sharded(directory / name)
    candidates = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return load_state_dict(candidates[0])
    found = ", ".join(p.name for p in candidates) or "none"
    raise FileNotFoundError(
        f"{directory} has no {SAFETENSORS_NAME}, {PICKLE_NAME} or shard index, and not exactly one other "
        f"weights file (found: {found}); pass the weights file itself"
    )


# ------------------------------------------------------------------------------------------------
# the architecture, from the tensors
def infer_config_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Everything the HF-layout tensors determine: widths, depths, levels, kernels, flags, labels."""
    enc = {k.removeprefix(PREFIX): v for k, v in state.items()}
    stem = enc.get("embeddings.patch_embeddings.projection.weight")
    if stem is None or stem.ndim != 4:
        raise CheckpointError(
            "not a FocalNet checkpoint: no stem convolution "
            "(embeddings.patch_embeddings.projection.weight) in the weights"
        )
    embed_dim, num_channels, kernel_h, kernel_w = stem.shape
    block_keys = [re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.", k) for k in enc]
    blocks = sorted({(int(m[1]), int(m[2])) for m in block_keys if m})
    if not blocks:
        raise CheckpointError("not a FocalNet checkpoint: no blocks (encoder.stages.*.layers.*) in the weights")
    num_stages = blocks[-1][0] + 1
    depths = [1 + max(j for i, j in blocks if i == stage) for stage in range(num_stages)]
    levels, windows = [], []
    for stage in range(num_stages):
        first = f"encoder.stages.{stage}.layers.0.modulation."
        kernels = [enc[k].shape[-1] for k in enc if re.fullmatch(re.escape(first) + r"focal_layers\.\d+\.0\.weight", k)]
        if not kernels:
            raise CheckpointError(f"not a FocalNet checkpoint: stage {stage} has no focal layers")
        levels.append(len(kernels))
        windows.append(min(kernels))
        width = enc[first + "projection_out.weight"].shape[0]
        if width != embed_dim * 2**stage:
            raise CheckpointError(f"stage {stage} is {width} wide, not {embed_dim * 2**stage}: not a FocalNet")
    downsample = enc.get("encoder.stages.0.downsample.projection.weight")
    conv_embed = kernel_h == 7 and (downsample is None or downsample.shape[-1] == 3)
    fc1 = enc["encoder.stages.0.layers.0.mlp.fc1.weight"]
    kwargs: dict[str, Any] = {
        "embed_dim": embed_dim,
        "num_channels": num_channels,
        "use_conv_embed": conv_embed,
        "patch_size": 4 if conv_embed else (kernel_h if kernel_h == kernel_w else (kernel_h, kernel_w)),
        "depths": depths,
        "focal_levels": levels,
        "focal_windows": windows,
        "mlp_ratio": fc1.shape[0] / fc1.shape[1],
        "use_layerscale": "encoder.stages.0.layers.0.gamma_1" in enc,
        "use_post_layernorm_in_modulation": "encoder.stages.0.layers.0.modulation.layernorm.weight" in enc,
        "hidden_sizes": [embed_dim * 2 ** min(i + 1, num_stages - 1) for i in range(num_stages)],
    }
    kwargs["encoder_stride"] = (4 if conv_embed else kernel_h) * 2 ** (num_stages - 1)
    if "classifier.weight" in state:
        kwargs["num_labels"] = state["classifier.weight"].shape[0]
    return kwargs


@dataclass
class Resolved:
    """A checkpoint read and renamed to HF keys, with the config that fits it."""

    state: dict[str, torch.Tensor]
    config: FocalNetConfig
    source: str


def resolve(source: str | os.PathLike, config_overrides: dict[str, Any], **hub_kwargs: Any) -> Resolved:
    """Find, read and convert `source`; settle its config (see the module docstring)."""
    path = Path(source)
    entry = find_checkpoint(str(source))
    if not path.exists():
        if entry is None and not _looks_like_hub_id(str(source)):
            raise FileNotFoundError(
                f"{source} is neither a local file or directory, a registry name (focalnet.list_checkpoints()) "
                "nor a hub id such as microsoft/focalnet-tiny"
            )
        from .hub import download_checkpoint

        path = download_checkpoint(_hub_repo(str(source), entry), **hub_kwargs)
    file_config = None
    if path.is_dir():
        raw = _weights_in_directory(path)
        file_config, entry = _directory_config(path, entry)
    else:
        raw = load_state_dict(path)
        sibling = path.parent / CONFIG_NAME
        if path.name in (SAFETENSORS_NAME, PICKLE_NAME) and sibling.is_file():
            file_config, entry = _directory_config(path.parent, entry)
    raw, output_norms = split_dense_checkpoint(raw)
    try:
        layout = detect_layout(raw)
        state = to_hf(raw)
    except KeyError as err:
        raise CheckpointError(f"{source}: {err.args[0]}") from None
    inferred = infer_config_kwargs(state)
    if output_norms:
        state.update(output_norms)
        stages = sorted(key.split(".")[1] for key in output_norms if key.endswith(".weight"))
        config_overrides = {"use_backbone_layernorm": True, "out_features": stages, **config_overrides}
    if entry is not None:
        config = entry.config(**config_overrides)
    elif file_config is not None:
        config = FocalNetConfig.from_dict(file_config.to_dict(), **config_overrides)
    else:
        config = _config_from_tensors(inferred, raw, layout, config_overrides, str(source))
    _check_fits(config, inferred, str(source))
    return Resolved(state, config, str(source))


def _directory_config(directory: Path, entry: Checkpoint | None) -> tuple[FocalNetConfig | None, Checkpoint | None]:
    """An HF `config.json`, or the registry entry a timm `config.json` names."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        return None, entry
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); fetch or save it again") from None
    if isinstance(data, dict) and "architecture" in data and "model_type" not in data:  # timm's pretrained config
        tag = data.get("pretrained_cfg", {}).get("tag")
        timm_id = f"timm/{data['architecture']}" + (f".{tag}" if tag else "")
        return None, entry or find_checkpoint(timm_id)
    return FocalNetConfig.from_json_file(config_path), entry


def _config_from_tensors(
    inferred: dict[str, Any], raw: dict[str, torch.Tensor], layout: str, overrides: dict[str, Any], source: str
) -> FocalNetConfig:
    kwargs = dict(inferred)
    if layout == "timm":  # timm names the post-norms apart
        kwargs["use_post_layernorm"] = any(".norm1_post." in k for k in raw)
    known = {**kwargs, **overrides}
    missing = [flag for flag in HIDDEN_FLAGS if flag not in known]
    entry = match_architecture(FocalNetConfig(**{k: v for k, v in kwargs.items() if k != "num_labels"}))
    if entry is not None:  # a published checkpoint under another name: its flags and label names
        reference = entry.config()
        kwargs.update({flag: getattr(reference, flag) for flag in missing})
        missing = []
        if kwargs.get("num_labels") == reference.num_labels:
            kwargs["id2label"] = reference.id2label
    if missing:
        raise CheckpointError(
            f"{source} has no config.json and its tensors match no published checkpoint, so "
            f"{' and '.join(missing)} cannot be known; pass "
            + ", ".join(f"{flag}=True/False" for flag in missing)
            + " to from_pretrained"
        )
    kwargs.update(overrides)
    return FocalNetConfig(**kwargs)


def _check_fits(config: FocalNetConfig, inferred: dict[str, Any], source: str) -> None:
    """Name every config field that contradicts the tensors (e.g. HF's xlarge config.json)."""
    from_tensors = FocalNetConfig(**{k: v for k, v in inferred.items() if k != "num_labels"})
    expected, found = architecture_signature(config), architecture_signature(from_tensors)
    wrong = [
        f"{name}: config {expected[name]} vs weights {found[name]}"
        for name in expected
        if expected[name] != found[name]
    ]
    if not wrong:
        return
    raise CheckpointError(
        f"the config does not match the weights of {source} ({'; '.join(wrong)}); "
        "fix config.json or pass the right values to from_pretrained"
    )


def _hub_repo(source: str, entry: Checkpoint | None) -> str:
    """The hub repository to fetch: the id as given, or the one a registry name points to."""
    if entry is None:
        return source
    if source.startswith("timm/") and entry.timm_hub_id:
        return entry.timm_hub_id  # adds the tag a bare timm name leaves out
    if source != entry.name:
        return source
    repo = entry.hf_hub_id or entry.timm_hub_id
    if repo is None:
        raise FileNotFoundError(
            f"{entry.name} is published only as the original release file {entry.original_file}; "
            "download it from the authors' release and pass its path"
        )
    return repo


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None


# ------------------------------------------------------------------------------------------------
# into a model
def adapt_state_dict(
    state: dict[str, torch.Tensor], model: FocalNetPreTrainedModel
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fit the `focalnet.` prefix to `model`; return the dict and the head keys it has no place for."""
    expected = model.state_dict().keys()
    if not any(k.startswith(PREFIX) for k in expected):  # the bare encoder: strip the prefix
        state = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in state.items()}
        encoder_key = lambda k: not k.startswith(("classifier.", "decoder.", "hidden_states_norms."))  # noqa: E731
    else:
        encoder_key = lambda k: k.startswith(PREFIX)  # noqa: E731
    # heads and a mask token the model has no place for
    dropped = [k for k in state if k not in expected and (not encoder_key(k) or k.endswith("mask_token"))]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_into(model: FocalNetPreTrainedModel, state: dict[str, torch.Tensor], source: str) -> dict[str, list[str]]:
    """Copy HF-layout `state` into `model`, strictly: any missing, unexpected or mis-shaped key is an error.

    Head weights the class lacks are dropped, and parameters a fresh head adds (a classifier or
    decoder on a bare encoder, a mask token) keep their initial values; both are reported. Keys the
    model declares unused (`_keys_to_ignore_on_load_missing`) may be absent and are not reported.
    """
    state, dropped = adapt_state_dict(state, model)
    own = model.state_dict()
    unused = [re.compile(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_missing", ())]
    ignored = [k for k in own if k not in state and any(p.search(k) for p in unused)]  # kept at their init
    fresh_head = [
        k for k in own if k not in state and k not in ignored and (not k.startswith(PREFIX) or k.endswith("mask_token"))
    ]
    missing = [k for k in own if k not in state and k not in fresh_head and k not in ignored]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_preview(mismatched)}")
    if problems:
        raise CheckpointError(
            f"the checkpoint {source} does not fit {type(model).__name__} with this config: "
            + "; ".join(problems)
            + ". Check that the config matches the weights."
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    return {"dropped": dropped, "newly_initialized": fresh_head}


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def from_pretrained(
    cls: type[FocalNetPreTrainedModel],
    source: str | os.PathLike,
    *,
    expand_focal: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **config_overrides: Any,
) -> FocalNetPreTrainedModel:
    """Build `cls` from any FocalNet checkpoint (see the module docstring); returns it in eval mode.

    Keyword arguments override config fields. A `num_labels` (or `id2label`) other than the
    checkpoint's gives a fresh classifier and says so; without such an override a head that does
    not match the config is an error. With `expand_focal=True`, `focal_levels`/`focal_windows` larger
    than the checkpoint's are reached by transferring the weights (`focalnet.transfer`).
    """
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir}
    architecture_overrides = {
        k: config_overrides.pop(k) for k in ("focal_levels", "focal_windows") if k in config_overrides
    }
    if architecture_overrides and not expand_focal:
        raise ValueError("changing focal_levels or focal_windows of a checkpoint needs expand_focal=True")
    resolved = resolve(source, config_overrides, **hub_kwargs)
    return build_from_resolved(cls, resolved, config_overrides, architecture_overrides)


def build_from_resolved(
    cls: type[FocalNetPreTrainedModel],
    resolved: Resolved,
    config_overrides: dict[str, Any] | None = None,
    architecture_overrides: dict[str, Any] | None = None,
) -> FocalNetPreTrainedModel:
    """`cls` with the weights of an already read checkpoint, in eval mode (the second half of
    `from_pretrained`, for callers that look at the checkpoint before choosing the class)."""
    config_overrides = config_overrides or {}
    source = resolved.source
    config, state = resolved.config, resolved.state
    if architecture_overrides:
        from .transfer import expand_focal_weights

        config = FocalNetConfig.from_dict(config.to_dict(), **architecture_overrides)
        state = expand_focal_weights(state, config)
    config = cls.config_for_weights(config, state)
    model = cls(config)
    old_head = state.get("classifier.weight")
    relabelled = "num_labels" in config_overrides or "id2label" in config_overrides
    replaced = relabelled and hasattr(model, "classifier") and old_head is not None
    replaced = replaced and old_head.shape[0] != config.num_labels
    if replaced:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        warnings.warn(
            f"replaced the {old_head.shape[0]}-class classifier of {source} by a new {config.num_labels}-class one",
            stacklevel=3,
        )
    report = load_into(model, state, resolved.source)
    if report["newly_initialized"] and not replaced:
        dropped = report["dropped"]
        warnings.warn(
            f"{type(model).__name__} weights not in {source}, newly initialised: "
            + _preview(report["newly_initialized"])
            + (f"; the encoder was loaded and the source's {_preview(dropped)} dropped" if dropped else ""),
            stacklevel=3,
        )
    model.eval()
    return model
