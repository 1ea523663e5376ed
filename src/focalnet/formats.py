"""Checkpoint layouts: renaming between HF keys (ours) and timm's (SPEC section 4.3).

timm runs NCHW with 1x1 convolutions where HF has Linear layers, keeps the encoder at the
top level (no `focalnet.` prefix), and moves each downsample to the START of the next stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from .configuration import FocalNetConfig

_BLOCK = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_TIMM_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."

# (HF pattern, timm replacement) for keys whose stage index does not move.
_HF_TO_TIMM_SIMPLE = [
    (r"^embeddings\.patch_embeddings\.projection\.", "stem.proj."),
    (r"^embeddings\.norm\.", "stem.norm."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head.fc."),
    (_BLOCK + r"gamma_(\d)$", r"layers.\1.blocks.\2.ls\3.gamma"),
    (_BLOCK + r"modulation\.projection_in\.", r"layers.\1.blocks.\2.modulation.f."),
    (_BLOCK + r"modulation\.projection_context\.", r"layers.\1.blocks.\2.modulation.h."),
    (_BLOCK + r"modulation\.projection_out\.", r"layers.\1.blocks.\2.modulation.proj."),
    (_BLOCK + r"modulation\.layernorm\.", r"layers.\1.blocks.\2.modulation.norm."),
    (_BLOCK + r"modulation\.focal_layers\.", r"layers.\1.blocks.\2.modulation.focal_layers."),
    (_BLOCK + r"mlp\.", r"layers.\1.blocks.\2.mlp."),
]
_TIMM_TO_HF_SIMPLE = [
    (r"^stem\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^stem\.norm\.", "embeddings.norm."),
    (r"^norm\.", "layernorm."),
    (r"^head\.fc\.", "classifier."),
    (_TIMM_BLOCK + r"ls(\d)\.gamma$", r"encoder.stages.\1.layers.\2.gamma_\3"),
    (_TIMM_BLOCK + r"modulation\.f\.", r"encoder.stages.\1.layers.\2.modulation.projection_in."),
    (_TIMM_BLOCK + r"modulation\.h\.", r"encoder.stages.\1.layers.\2.modulation.projection_context."),
    (_TIMM_BLOCK + r"modulation\.proj\.", r"encoder.stages.\1.layers.\2.modulation.projection_out."),
    (_TIMM_BLOCK + r"modulation\.norm\.", r"encoder.stages.\1.layers.\2.modulation.layernorm."),
    (_TIMM_BLOCK + r"modulation\.focal_layers\.", r"encoder.stages.\1.layers.\2.modulation.focal_layers."),
    (_TIMM_BLOCK + r"mlp\.", r"encoder.stages.\1.layers.\2.mlp."),
    (_TIMM_BLOCK + r"norm(\d)(?:_post)?\.", r"encoder.stages.\1.layers.\2.norm\3."),
]
_HF_DOWNSAMPLE = r"encoder\.stages\.(\d+)\.downsample\.(projection|norm)\.(\w+)$"
_TIMM_DOWNSAMPLE = r"layers\.(\d+)\.downsample\.(proj|norm)\.(\w+)$"
_TO_TIMM_PART = {"projection": "proj", "norm": "norm"}
_TO_HF_PART = {"proj": "projection", "norm": "norm"}
# Weights that are Linear in HF and 1x1 convolutions in timm.
_LINEAR_AS_CONV = re.compile(r"(modulation\.(f|proj)|mlp\.fc\d)\.weight$")


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def _move_downsample(key: str, pattern: str, template: str, parts: dict[str, str], shift: int) -> str | None:
    """Rename a downsample key, moving it `shift` stages (timm keeps it at the start of the next stage)."""
    match = re.match(pattern, key)
    if match is None:
        return None
    return template.format(stage=int(match[1]) + shift, part=parts[match[2]], param=match[3])


def _convert(
    state: dict[str, torch.Tensor],
    rename: Callable[[str], str | None],
    reshape: Callable[[str, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new_key = rename(key)
        if new_key is None:
            raise KeyError(f"no rule maps the key {key!r}; is this a FocalNet checkpoint of the expected layout?")
        out[new_key] = reshape(new_key, value)
    return out


def hf_to_timm(state: dict[str, torch.Tensor], config: FocalNetConfig) -> dict[str, torch.Tensor]:
    """HF-layout encoder/classifier state dict (with or without `focalnet.`) -> timm `FocalNet` keys."""
    state = {k.removeprefix("focalnet."): v for k, v in state.items()}
    post = "_post" if config.use_post_layernorm else ""

    def rename(key: str) -> str | None:
        moved = _move_downsample(key, _HF_DOWNSAMPLE, "layers.{stage}.downsample.{part}.{param}", _TO_TIMM_PART, 1)
        if moved is not None:
            return moved
        norm = re.match(_BLOCK + r"norm(\d)\.(\w+)$", key)
        if norm is not None:
            return f"layers.{norm[1]}.blocks.{norm[2]}.norm{norm[3]}{post}.{norm[4]}"
        return _rename(key, _HF_TO_TIMM_SIMPLE)

    def reshape(key: str, value: torch.Tensor) -> torch.Tensor:
        return value[:, :, None, None] if _LINEAR_AS_CONV.search(key) and value.ndim == 2 else value

    return _convert(state, rename, reshape)


def timm_to_hf(state: dict[str, torch.Tensor], prefix: str = "focalnet.") -> dict[str, torch.Tensor]:
    """timm `FocalNet` state dict -> HF keys (encoder under `prefix`, head as `classifier`)."""

    def rename(key: str) -> str | None:
        template = "encoder.stages.{stage}.downsample.{part}.{param}"
        new_key = _move_downsample(key, _TIMM_DOWNSAMPLE, template, _TO_HF_PART, -1)
        if new_key is None:
            new_key = _rename(key, _TIMM_TO_HF_SIMPLE)
        if new_key is None or new_key.startswith("classifier."):
            return new_key
        return prefix + new_key

    def reshape(key: str, value: torch.Tensor) -> torch.Tensor:
        hf_linear = re.search(r"(projection_in|projection_out|mlp\.fc\d)\.weight$", key)
        return value.flatten(1) if hf_linear and value.ndim == 4 else value

    return _convert(state, rename, reshape)


# ------------------------------------------------------------------------------------------------
# The original microsoft/FocalNet layout (SPEC section 4.2): HF's tensors under older names.
_ORIGINAL_TO_HF = [
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "embeddings.norm."),
    (r"^norm\.", "layernorm."),
    (r"^head\.", "classifier."),
    (r"^layers\.(\d+)\.downsample\.proj\.", r"encoder.stages.\1.downsample.projection."),
    (r"^layers\.(\d+)\.downsample\.norm\.", r"encoder.stages.\1.downsample.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.f\.", r"encoder.stages.\1.layers.\2.modulation.projection_in."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.h\.", r"encoder.stages.\1.layers.\2.modulation.projection_context."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.proj\.", r"encoder.stages.\1.layers.\2.modulation.projection_out."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.ln\.", r"encoder.stages.\1.layers.\2.modulation.layernorm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"encoder.stages.\1.layers.\2."),
]
_HF_TO_ORIGINAL = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^encoder\.stages\.(\d+)\.downsample\.projection\.", r"layers.\1.downsample.proj."),
    (r"^encoder\.stages\.(\d+)\.downsample\.norm\.", r"layers.\1.downsample.norm."),
    (_BLOCK + r"modulation\.projection_in\.", r"layers.\1.blocks.\2.modulation.f."),
    (_BLOCK + r"modulation\.projection_context\.", r"layers.\1.blocks.\2.modulation.h."),
    (_BLOCK + r"modulation\.projection_out\.", r"layers.\1.blocks.\2.modulation.proj."),
    (_BLOCK + r"modulation\.layernorm\.", r"layers.\1.blocks.\2.modulation.ln."),
    (_BLOCK, r"layers.\1.blocks.\2."),
]


def original_to_hf(state: dict[str, torch.Tensor], prefix: str = "focalnet.") -> dict[str, torch.Tensor]:
    """Original-release state dict -> HF keys (same tensors, new names)."""

    def rename(key: str) -> str | None:
        new_key = _rename(key, _ORIGINAL_TO_HF)
        return new_key if new_key is None or new_key.startswith("classifier.") else prefix + new_key

    return _convert(state, rename, lambda key, value: value)


def hf_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-layout state dict -> the original release's keys."""
    state = {k.removeprefix("focalnet."): v for k, v in state.items()}
    return _convert(state, lambda key: _rename(key, _HF_TO_ORIGINAL), lambda key, value: value)


LAYOUTS = ("hf", "timm", "original")


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """Which of the three published layouts a state dict uses."""
    if any(k.startswith(("focalnet.", "embeddings.", "encoder.")) for k in state):
        return "hf"
    if any(k.startswith("stem.") for k in state):
        return "timm"
    if any(k.startswith("patch_embed.") for k in state):
        return "original"
    sample = ", ".join(list(state)[:5])
    raise KeyError(
        f"not a FocalNet checkpoint: the weights are in no FocalNet layout (HF, timm or original); first keys: {sample}"
    )


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any FocalNet state dict -> HF keys (encoder under `focalnet.`)."""
    layout = detect_layout(state)
    if layout == "timm":
        return timm_to_hf(state)
    if layout == "original":
        return original_to_hf(state)
    if any(k.startswith("focalnet.") for k in state):
        return dict(state)
    return {k if k.startswith(("classifier.", "decoder.")) else "focalnet." + k: v for k, v in state.items()}


def from_hf(state: dict[str, torch.Tensor], layout: str, config: FocalNetConfig) -> dict[str, torch.Tensor]:
    """HF-layout state dict -> `layout` ("hf", "timm" or "original")."""
    if layout == "timm":
        return hf_to_timm(state, config)
    if layout == "original":
        return hf_to_original(state)
    if layout == "hf":
        return dict(state)
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
