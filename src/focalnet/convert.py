"""Checkpoint conversion between the three layouts (`focalnet convert`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoints import adapt_state_dict, resolve, save_state_dict
from .formats import from_hf


def model_class_for(state: dict) -> type:
    """The HF class whose checkpoint this is: MIM if it has a decoder, a classifier if a head."""
    from .modeling import FocalNetForImageClassification, FocalNetForMaskedImageModeling, FocalNetModel

    if any(k.startswith("decoder.") for k in state):
        return FocalNetForMaskedImageModeling
    if any(k.startswith("classifier.") for k in state):
        return FocalNetForImageClassification
    return FocalNetModel


def convert_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, layout: str = "hf", **config_overrides: Any
) -> Path:
    """Read `source` in any layout and write it in `layout`; return what was written.

    "hf" writes a directory (`config.json` + `model.safetensors`) that `transformers` loads;
    "timm" a state dict for `timm.create_model(...)` (safetensors, or a pickle for other suffixes);
    "original" a `.pth` holding {"model": state dict}, as the authors' release files do.
    """
    resolved = resolve(source, config_overrides)
    destination = Path(destination)
    if layout == "hf":
        model = model_class_for(resolved.state)(resolved.config)
        model.load_state_dict(adapt_state_dict(resolved.state, model)[0], strict=True)
        model.save_pretrained(destination)
        return destination
    if any(k.startswith("decoder.") for k in resolved.state):
        raise ValueError(f"the {layout} layout has no masked-image-modeling head; convert this checkpoint --to hf")
    state = from_hf(resolved.state, layout, resolved.config)
    if layout == "original":
        import torch

        from ._io import atomic_path

        with atomic_path(destination) as tmp:
            torch.save({"model": {k: v.contiguous() for k, v in state.items()}}, tmp)
    else:
        save_state_dict(state, destination)
    return destination
