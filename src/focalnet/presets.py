"""The official FocalNet variants (SPEC section 3), one entry each.

A preset is an architecture: widths, depths, focal levels and windows, block flags, native
resolution and label count of the released weights. Where the released weights come from
(hub ids, file names, preprocessing) is the concern of the weights registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_1K_LABELS = 1000
IMAGENET_22K_LABELS = 21842


@dataclass(frozen=True)
class Preset:
    """One official variant.

    `reported_params` is the parameter count published for it, exact unless `reported_rounding`
    says to what it was rounded; `params_include_head` says whether it includes the
    classification head (the 22K models are reported without).
    """

    name: str
    embed_dim: int
    depths: tuple[int, ...]
    focal_level: int
    focal_window: int
    image_size: int = 224
    num_labels: int = IMAGENET_1K_LABELS
    patch_size: int = 4
    drop_path_rate: float = 0.2
    reported_params: int | None = None
    reported_rounding: int = 1
    params_include_head: bool = True
    flags: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def config_dict(self) -> dict[str, Any]:
        num_stages = len(self.depths)
        widths = [self.embed_dim * 2**i for i in range(num_stages)]
        # HF's metadata field lists the widths after each stage's downsample
        hidden_sizes = widths[1:] + widths[-1:] if num_stages > 1 else widths
        return {
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "focal_levels": [self.focal_level] * num_stages,
            "focal_windows": [self.focal_window] * num_stages,
            "hidden_sizes": hidden_sizes,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "encoder_stride": self.patch_size * 2 ** (num_stages - 1),
            "drop_path_rate": self.drop_path_rate,
            "num_labels": self.num_labels,
            **self.flags,
        }


_LARGE = {"use_conv_embed": True, "use_post_layernorm": True, "use_layerscale": True}
_HUGE = {**_LARGE, "use_post_layernorm_in_modulation": True}
_DEEP = (2, 2, 18, 2)


def _isotropic(name: str, dim: int, drop_path_rate: float, reported_params: int, **flags: Any) -> Preset:
    """One stage of 12 blocks on 16x16 patches, 3 focal levels (reported to 0.1 M)."""
    size = name.split("-")[1]
    return Preset(
        name,
        dim,
        (12,),
        3,
        3,
        patch_size=16,
        drop_path_rate=drop_path_rate,
        reported_params=reported_params,
        reported_rounding=100_000,
        flags=flags,
        description=f"isotropic {size}/16, one stage",
    )


_PRESET_LIST = [
    Preset("focalnet-tiny", 96, (2, 2, 6, 2), 2, 3, reported_params=28_427_116, description="T, small receptive field"),
    Preset("focalnet-tiny-lrf", 96, (2, 2, 6, 2), 3, 3, reported_params=28_647_928, description="T, large RF"),
    Preset("focalnet-small", 96, _DEEP, 2, 3, drop_path_rate=0.3, reported_params=49_891_216, description="S, SRF"),
    Preset("focalnet-small-lrf", 96, _DEEP, 3, 3, drop_path_rate=0.3, reported_params=50_342_440, description="S, LRF"),
    Preset("focalnet-base", 128, _DEEP, 2, 3, drop_path_rate=0.5, reported_params=88_148_144, description="B, SRF"),
    Preset("focalnet-base-lrf", 128, _DEEP, 3, 3, drop_path_rate=0.5, reported_params=88_749_768, description="B, LRF"),
    Preset(
        "focalnet-large-lrf-fl3",
        192,
        _DEEP,
        3,
        5,
        image_size=384,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=205_563_744,
        params_include_head=False,
        flags=_LARGE,
        description="L, 3 levels, ImageNet-22K",
    ),
    Preset(
        # normalize_modulator: the authors' training config (configs/focalnet_large_fl4.yaml) sets it;
        # timm and transformers leave it off, which changes the outputs of the released weights.
        "focalnet-large-lrf-fl4",
        192,
        _DEEP,
        4,
        3,
        image_size=384,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=205_744_248,
        params_include_head=False,
        flags={**_LARGE, "normalize_modulator": True},
        description="L, 4 levels, ImageNet-22K",
    ),
    Preset(
        "focalnet-xlarge-lrf-fl3",
        256,
        _DEEP,
        3,
        5,
        image_size=384,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=364_033_120,
        params_include_head=False,
        flags=_LARGE,
        description="XL, 3 levels, ImageNet-22K",
    ),
    Preset(
        "focalnet-xlarge-lrf-fl4",
        256,
        _DEEP,
        4,
        3,
        image_size=384,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=364_273_784,
        params_include_head=False,
        flags=_LARGE,
        description="XL, 4 levels, ImageNet-22K",
    ),
    Preset(
        "focalnet-huge-fl3",
        352,
        _DEEP,
        3,
        3,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=683_747_424,
        params_include_head=False,
        flags=_HUGE,
        description="H, 3 levels, ImageNet-22K",
    ),
    Preset(
        "focalnet-huge-fl4",
        352,
        _DEEP,
        4,
        3,
        num_labels=IMAGENET_22K_LABELS,
        drop_path_rate=0.5,
        reported_params=686_460_000,
        reported_rounding=10_000,
        params_include_head=False,
        flags=_HUGE,
        description="H, 4 levels, ImageNet-22K (timm: 686.46 M without head)",
    ),
    _isotropic("focalnet-tiny-iso", 192, drop_path_rate=0.1, reported_params=5_900_000),
    _isotropic("focalnet-small-iso", 384, drop_path_rate=0.2, reported_params=22_400_000),
    # the paper's 87.2 M; the released checkpoint also has modulation.ln (set by its registry entry)
    _isotropic("focalnet-base-iso", 768, drop_path_rate=0.2, reported_params=87_200_000, use_layerscale=True),
]

PRESETS: dict[str, Preset] = {preset.name: preset for preset in _PRESET_LIST}


def paper_drop_path(model_name: str) -> float:
    """The paper's stochastic depth for a preset: T 0.2, S 0.3, B and larger 0.5 (others 0.1)."""
    for size, rate in (("tiny", 0.2), ("small", 0.3), ("base", 0.5), ("large", 0.5), ("huge", 0.5)):
        if size in model_name:
            return rate
    return 0.1


def list_presets() -> list[str]:
    """Names accepted by `FocalNetConfig.from_preset`."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def preset_config_dict(name: str) -> dict[str, Any]:
    return get_preset(name).config_dict()
