"""Every published FocalNet checkpoint, one entry each (like torchvision's `WeightsEnum`).

An entry carries the exact config of the weights (preset plus the flags the tensors cannot
tell), where the weights are published in each of the three layouts, the label set, the
preprocessing they were evaluated with, and the reported ImageNet-1K top-1.

Decisions, where the sources disagree:
* `normalize_modulator` is on for large-fl4 (the authors' configs/focalnet_large_fl4.yaml);
  timm and transformers leave it off. It cannot be read from the weights.
* xlarge is 256 wide; HF's converter wrote `embed_dim: 192` into the hub config.json of the
  xlarge repos ("xlarge" contains "large"). Loading those repos applies this entry's config.
* The isotropic base file carries `modulation.ln` (an older meaning of the post-LN flag):
  its entry sets `use_post_layernorm_in_modulation` on top of the paper's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from .configuration import FocalNetConfig
from .presets import IMAGENET_22K_LABELS, get_preset


@dataclass(frozen=True)
class Checkpoint:
    name: str
    preset: str
    hf_hub_id: str | None = None
    timm_hub_id: str | None = None
    original_file: str | None = None
    num_labels: int | None = None  # None: the preset's
    pipeline: str = "hf"  # default preprocessing: "hf", "timm" or "original" (FocalNetImageProcessor presets)
    top1: float | None = None  # reported ImageNet-1K top-1 (%)
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, **extra: Any) -> FocalNetConfig:
        """The exact config of these weights, with labels named when a label set is known."""
        kwargs: dict[str, Any] = dict(self.overrides)
        num_labels = self.num_labels if self.num_labels is not None else get_preset(self.preset).num_labels
        kwargs["num_labels"] = num_labels
        id2label = _label_names(num_labels)
        if id2label is not None:
            kwargs["id2label"] = id2label
        kwargs.update(extra)
        return FocalNetConfig.from_preset(self.preset, **kwargs)

    @property
    def image_size(self) -> int:
        return get_preset(self.preset).image_size


def _label_names(num_labels: int) -> dict[int, str] | None:
    try:
        from .labels import imagenet_id2label
    except ImportError:  # label data not installed with this build
        return None
    try:
        return imagenet_id2label(num_labels)
    except ValueError:
        return None


def _in1k(name: str, preset: str, timm_name: str, original: str, top1: float) -> Checkpoint:
    return Checkpoint(
        name=name,
        preset=preset,
        hf_hub_id=f"microsoft/{name}",
        timm_hub_id=f"timm/{timm_name}.ms_in1k",
        original_file=original,
        top1=top1,
    )


def _in22k(name: str, preset: str, timm_name: str, original: str, hf: bool = True) -> Checkpoint:
    return Checkpoint(
        name=name,
        preset=preset,
        hf_hub_id=f"microsoft/{name}" if hf else None,
        timm_hub_id=f"timm/{timm_name}.ms_in22k",
        original_file=original,
        num_labels=IMAGENET_22K_LABELS,
        pipeline="timm",
    )


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in [
        _in1k("focalnet-tiny", "focalnet-tiny", "focalnet_tiny_srf", "focalnet_tiny_srf.pth", 82.1),
        _in1k("focalnet-tiny-lrf", "focalnet-tiny-lrf", "focalnet_tiny_lrf", "focalnet_tiny_lrf.pth", 82.3),
        _in1k("focalnet-small", "focalnet-small", "focalnet_small_srf", "focalnet_small_srf.pth", 83.4),
        _in1k("focalnet-small-lrf", "focalnet-small-lrf", "focalnet_small_lrf", "focalnet_small_lrf.pth", 83.5),
        _in1k("focalnet-base", "focalnet-base", "focalnet_base_srf", "focalnet_base_srf.pth", 83.7),
        _in1k("focalnet-base-lrf", "focalnet-base-lrf", "focalnet_base_lrf", "focalnet_base_lrf.pth", 83.9),
        _in22k("focalnet-large-lrf-fl3", "focalnet-large-lrf-fl3", "focalnet_large_fl3", "focalnet_large_lrf_384.pth"),
        _in22k(
            "focalnet-large-lrf-fl4", "focalnet-large-lrf-fl4", "focalnet_large_fl4", "focalnet_large_lrf_384_fl4.pth"
        ),
        _in22k(
            "focalnet-xlarge-lrf-fl3", "focalnet-xlarge-lrf-fl3", "focalnet_xlarge_fl3", "focalnet_xlarge_lrf_384.pth"
        ),
        _in22k(
            "focalnet-xlarge-lrf-fl4",
            "focalnet-xlarge-lrf-fl4",
            "focalnet_xlarge_fl4",
            "focalnet_xlarge_lrf_384_fl4.pth",
        ),
        _in22k("focalnet-huge-fl3", "focalnet-huge-fl3", "focalnet_huge_fl3", "focalnet_huge_lrf_224.pth", hf=False),
        # timm publishes huge-fl4 without its head
        Checkpoint(
            name="focalnet-huge-fl4",
            preset="focalnet-huge-fl4",
            timm_hub_id="timm/focalnet_huge_fl4.ms_in22k",
            original_file="focalnet_huge_lrf_224_fl4.pth",
            num_labels=IMAGENET_22K_LABELS,
            pipeline="timm",
        ),
        Checkpoint(
            name="focalnet-tiny-iso",
            preset="focalnet-tiny-iso",
            original_file="focalnet_tiny_iso_16.pth",
            pipeline="original",
        ),
        Checkpoint(
            name="focalnet-small-iso",
            preset="focalnet-small-iso",
            original_file="focalnet_small_iso_16.pth",
            pipeline="original",
        ),
        Checkpoint(
            name="focalnet-base-iso",
            preset="focalnet-base-iso",
            original_file="focalnet_base_iso_16.pth",
            pipeline="original",
            overrides={"use_post_layernorm_in_modulation": True},
        ),
    ]
}


def list_checkpoints() -> list[str]:
    return list(CHECKPOINTS)


def find_checkpoint(source: str) -> Checkpoint | None:
    """The entry a name, hub id (HF or timm, with or without timm's tag) or release file name refers to."""
    text = str(source)
    base = PurePath(text).name
    for entry in CHECKPOINTS.values():
        timm_ids = {entry.timm_hub_id, entry.timm_hub_id.split(".")[0]} if entry.timm_hub_id else set()
        if text in {entry.name, entry.hf_hub_id, *timm_ids} or (entry.original_file and base == entry.original_file):
            return entry
    return None


def match_architecture(config: FocalNetConfig) -> Checkpoint | None:
    """The entry whose weights have exactly these tensor shapes (used to settle flags tensors hide)."""
    for entry in CHECKPOINTS.values():
        reference = FocalNetConfig.from_preset(entry.preset, **entry.overrides)
        if architecture_signature(reference) == architecture_signature(config):
            return entry
    return None


# What the tensors of a checkpoint determine: every field but pre/post-norm and normalize_modulator.
ARCHITECTURE_FIELDS = (
    "embed_dim",
    "depths",
    "focal_levels",
    "focal_windows",
    "patch_size_2d",
    "num_channels",
    "use_conv_embed",
    "use_layerscale",
    "use_post_layernorm_in_modulation",
    "mlp_ratio",
)


def architecture_signature(config: FocalNetConfig) -> dict[str, Any]:
    """The fields of `config` that a checkpoint's tensor shapes fix, by name."""
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
