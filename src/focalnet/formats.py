"""Checkpoint layouts: renaming between HF keys (ours), timm's and the original release's (SPEC 4).

timm runs NCHW with 1x1 convolutions where HF has Linear layers, keeps the encoder at the
top level (no `focalnet.` prefix), and moves each downsample to the START of the next stage.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch

from .configuration import FocalNetConfig

# Name templates: `{s}` a stage index, `{b}` a block index, `{n}` a digit. A template matches a key's
# beginning and the rest of the key is kept, so each table reads in both directions.
_BLOCK = "encoder.stages.{s}.layers.{b}."
_OTHER_BLOCK = "layers.{s}.blocks.{b}."  # timm and the original release name blocks alike
_BLOCK_RE = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_TIMM_BLOCK_RE = r"layers\.(\d+)\.blocks\.(\d+)\."

# (HF, timm) for keys whose stage index does not move; downsample and block norms are special.
_TIMM_NAMES = [
    ("embeddings.patch_embeddings.projection.", "stem.proj."),
    ("embeddings.norm.", "stem.norm."),
    ("layernorm.", "norm."),
    ("classifier.", "head.fc."),
    (_BLOCK + "gamma_{n}", _OTHER_BLOCK + "ls{n}.gamma"),
    (_BLOCK + "modulation.projection_in.", _OTHER_BLOCK + "modulation.f."),
    (_BLOCK + "modulation.projection_context.", _OTHER_BLOCK + "modulation.h."),
    (_BLOCK + "modulation.projection_out.", _OTHER_BLOCK + "modulation.proj."),
    (_BLOCK + "modulation.layernorm.", _OTHER_BLOCK + "modulation.norm."),
    (_BLOCK + "modulation.focal_layers.", _OTHER_BLOCK + "modulation.focal_layers."),
    (_BLOCK + "mlp.", _OTHER_BLOCK + "mlp."),
]
_HF_DOWNSAMPLE = r"encoder\.stages\.(\d+)\.downsample\.(projection|norm)\.(\w+)$"
_TIMM_DOWNSAMPLE = r"layers\.(\d+)\.downsample\.(proj|norm)\.(\w+)$"
_TO_TIMM_PART = {"projection": "proj", "norm": "norm"}
_TO_HF_PART = {"proj": "projection", "norm": "norm"}
# Weights that are Linear in HF and 1x1 convolutions in timm.
_LINEAR_AS_CONV = re.compile(r"(modulation\.(f|proj)|mlp\.fc\d)\.weight$")


@functools.cache
def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)))


def _rename(key: str, names: list[tuple[str, str]], to_hf: bool = False) -> str | None:
    """Rename `key` by the first (HF, other) template pair whose source side it starts with."""
    for hf_name, other_name in names:
        source, target = (other_name, hf_name) if to_hf else (hf_name, other_name)
        match = _template_regex(source).match(key)
        if match:
            return target.format(**match.groupdict()) + key[match.end() :]
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
        norm = re.match(_BLOCK_RE + r"norm(\d)\.(\w+)$", key)
        if norm is not None:
            return f"layers.{norm[1]}.blocks.{norm[2]}.norm{norm[3]}{post}.{norm[4]}"
        return _rename(key, _TIMM_NAMES)

    def reshape(key: str, value: torch.Tensor) -> torch.Tensor:
        return value[:, :, None, None] if _LINEAR_AS_CONV.search(key) and value.ndim == 2 else value

    return _convert(state, rename, reshape)


def timm_to_hf(state: dict[str, torch.Tensor], prefix: str = "focalnet.") -> dict[str, torch.Tensor]:
    """timm `FocalNet` state dict -> HF keys (encoder under `prefix`, head as `classifier`)."""

    def rename(key: str) -> str | None:
        template = "encoder.stages.{stage}.downsample.{part}.{param}"
        new_key = _move_downsample(key, _TIMM_DOWNSAMPLE, template, _TO_HF_PART, -1)
        norm = re.match(_TIMM_BLOCK_RE + r"norm(\d)(?:_post)?\.(\w+)$", key)
        if new_key is None and norm is not None:
            new_key = f"encoder.stages.{norm[1]}.layers.{norm[2]}.norm{norm[3]}.{norm[4]}"
        if new_key is None:
            new_key = _rename(key, _TIMM_NAMES, to_hf=True)
        if new_key is None or new_key.startswith("classifier."):
            return new_key
        return prefix + new_key

    def reshape(key: str, value: torch.Tensor) -> torch.Tensor:
        hf_linear = re.search(r"(projection_in|projection_out|mlp\.fc\d)\.weight$", key)
        return value.flatten(1) if hf_linear and value.ndim == 4 else value

    return _convert(state, rename, reshape)


# ------------------------------------------------------------------------------------------------
# The original microsoft/FocalNet layout (SPEC section 4.2): HF's tensors under older names.
# (HF, original); the block rule comes last, after the modulation names it would swallow.
_ORIGINAL_NAMES = [
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("embeddings.norm.", "patch_embed.norm."),
    ("layernorm.", "norm."),
    ("classifier.", "head."),
    ("encoder.stages.{s}.downsample.projection.", "layers.{s}.downsample.proj."),
    ("encoder.stages.{s}.downsample.norm.", "layers.{s}.downsample.norm."),
    (_BLOCK + "modulation.projection_in.", _OTHER_BLOCK + "modulation.f."),
    (_BLOCK + "modulation.projection_context.", _OTHER_BLOCK + "modulation.h."),
    (_BLOCK + "modulation.projection_out.", _OTHER_BLOCK + "modulation.proj."),
    (_BLOCK + "modulation.layernorm.", _OTHER_BLOCK + "modulation.ln."),
    (_BLOCK, _OTHER_BLOCK),
]


def original_to_hf(state: dict[str, torch.Tensor], prefix: str = "focalnet.") -> dict[str, torch.Tensor]:
    """Original-release state dict -> HF keys (same tensors, new names)."""

    def rename(key: str) -> str | None:
        new_key = _rename(key, _ORIGINAL_NAMES, to_hf=True)
        return new_key if new_key is None or new_key.startswith("classifier.") else prefix + new_key

    return _convert(state, rename, lambda key, value: value)


def hf_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-layout state dict -> the original release's keys."""
    state = {k.removeprefix("focalnet."): v for k, v in state.items()}
    return _convert(state, lambda key: _rename(key, _ORIGINAL_NAMES), lambda key, value: value)


LAYOUTS = ("hf", "timm", "original")
DENSE_PREFIX = "backbone."
_DENSE_NORM = re.compile(r"norm(\d+)\.(weight|bias)$")


def split_dense_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint of the original detection or segmentation code (mmdet/mmseg: the backbone under
    `backbone.`, its output norms `backbone.norm0..3`, heads beside it) -> (the backbone's encoder,
    its output norms renamed to `FocalNetBackbone`'s `hidden_states_norms.stage{i+1}.*`). Any other
    state dict comes back unchanged, with no norms."""
    if not any(key.startswith(DENSE_PREFIX) for key in state):
        return state, {}
    encoder, norms = {}, {}
    for key, value in state.items():
        if not key.startswith(DENSE_PREFIX):
            continue  # neck, RPN, RoI or decode heads
        key = key.removeprefix(DENSE_PREFIX)
        match = _DENSE_NORM.fullmatch(key)
        if match:
            norms[f"hidden_states_norms.stage{int(match[1]) + 1}.{match[2]}"] = value
        else:
            encoder[key] = value
    return encoder, norms


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


_MMSEG_HEAD_NAMES = ((".bn.", ".batch_norm."), (".conv_seg.", ".classifier."))
MMSEG_HEADS = ("decode_head.", "auxiliary_head.")


def mmseg_heads_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UperNet and FCN heads of an mmsegmentation checkpoint under transformers' names (mmseg's
    `bn` is transformers' `batch_norm`, `conv_seg` its `classifier`; SPEC 10); other keys are left out."""
    heads = {}
    for key, value in state.items():
        if key.startswith(MMSEG_HEADS):
            for old, new in _MMSEG_HEAD_NAMES:
                key = key.replace(old, new)
            heads[key] = value
    return heads
