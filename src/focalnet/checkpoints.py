"""Saving and loading HF-layout checkpoints (`config.json` + `model.safetensors` / `pytorch_model.bin`).

What we write loads in `transformers` unchanged, and what `transformers` writes loads here.
Any model class loads any FocalNet checkpoint the way transformers does: the `focalnet.`
prefix is added or stripped as needed and head weights the class does not have are dropped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._io import atomic_path
from .configuration import CONFIG_NAME, FocalNetConfig

if TYPE_CHECKING:
    from .modeling import FocalNetPreTrainedModel

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
PREFIX = "focalnet."


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


def save_pretrained(
    model: FocalNetPreTrainedModel, save_directory: str | os.PathLike, safe_serialization: bool = True
) -> None:
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"{directory} is a file; save_pretrained needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.copy()
    config.extra["architectures"] = [type(model).__name__]
    config.architectures = [type(model).__name__]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if safe_serialization:
        from safetensors.torch import save_file

        with atomic_path(directory / SAFETENSORS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        with atomic_path(directory / PICKLE_NAME) as tmp:
            torch.save(state, tmp)
    config.save_pretrained(directory)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a pickle loaded with `weights_only=True` (runs no code)."""
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
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _weights_file(directory: Path) -> Path:
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}")


def adapt_state_dict(
    state: dict[str, torch.Tensor], model: FocalNetPreTrainedModel
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Add or strip the `focalnet.` prefix to fit `model`; return the dict and the dropped keys."""
    expected = model.state_dict().keys()
    model_prefixed = any(k.startswith(PREFIX) for k in expected)
    state_prefixed = any(k.startswith(PREFIX) for k in state)
    dropped: list[str] = []
    if state_prefixed and not model_prefixed:  # encoder from a model with a head
        dropped = [k for k in state if not k.startswith(PREFIX)]
        state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    elif model_prefixed and not state_prefixed:  # head model from a bare encoder
        state = {PREFIX + k: v for k, v in state.items()}
    else:
        dropped = [k for k in state if k not in expected and not k.startswith(PREFIX)]
        state = {k: v for k, v in state.items() if k not in dropped}
    return state, dropped


def load_into(model: FocalNetPreTrainedModel, state: dict[str, torch.Tensor], source: str) -> dict[str, list[str]]:
    """Copy `state` into `model`, strictly: any missing, unexpected or mis-shaped key is an error.

    Head weights the class lacks are dropped, and parameters a fresh head adds (a classifier
    or decoder on a bare encoder) are kept at their initial values; both are reported.
    """
    state, dropped = adapt_state_dict(state, model)
    own = model.state_dict()
    head_only = [k for k in own if not k.startswith(PREFIX) and k not in state]
    if any(k.startswith(PREFIX) for k in own):
        missing = [k for k in own if k not in state and k not in head_only]
    else:
        missing = [k for k in own if k not in state]
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
    return {"dropped": dropped, "newly_initialized": head_only}


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def from_pretrained(
    cls: type[FocalNetPreTrainedModel], source: str | os.PathLike, **kwargs: Any
) -> FocalNetPreTrainedModel:
    """Build `cls` from a directory holding `config.json` and HF-layout weights.

    Keyword arguments override config fields (e.g. `num_labels`); a `num_labels` different from
    the checkpoint's gives a fresh classifier and says so.
    """
    directory = Path(source)
    if not directory.is_dir():
        raise FileNotFoundError(f"{source} is not a directory holding {CONFIG_NAME} and weights")
    config = FocalNetConfig.from_pretrained(directory)
    state = load_state_dict(_weights_file(directory))
    new_labels = kwargs.get("num_labels")
    config = FocalNetConfig.from_dict(config.to_dict(), **kwargs)
    model = cls(config)
    old_head = state.get("classifier.weight")
    replaced = new_labels is not None and old_head is not None and old_head.shape[0] != new_labels
    if replaced:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        warnings.warn(
            f"replaced the {old_head.shape[0]}-class classifier of {source} by a new {new_labels}-class one",
            stacklevel=3,
        )
    report = load_into(model, state, str(source))
    if report["newly_initialized"] and not replaced:
        warnings.warn(
            f"{type(model).__name__} weights not in {source}, newly initialised: "
            + _preview(report["newly_initialized"]),
            stacklevel=3,
        )
    model.eval()
    return model
