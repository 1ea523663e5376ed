"""Optimiser, learning-rate schedule and weight averaging for the training recipe."""

from __future__ import annotations

import math
import re

import torch
from torch import nn


def skips_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Norm weights, biases, LayerScale gammas (all 1-D) and the MIM mask token get no weight decay.

    (The released FocalNet code's no-decay set {''} matches every name and so decays nothing;
    this is the paper's intent, SPEC section 6.)
    """
    return parameter.ndim <= 1 or name.endswith("mask_token")


def layer_depth(name: str, depths: list[int]) -> int:
    """Depth index for layer-wise LR decay: 0 for the stem, 1..sum(depths) for the blocks (a
    stage's downsample goes with its last block), sum(depths) + 1 for the final norm and head."""
    name = name.removeprefix("focalnet.")
    if name.startswith("embeddings."):
        return 0
    match = re.match(r"encoder\.stages\.(\d+)\.(?:layers\.(\d+)|downsample)", name)
    if match is None:
        return sum(depths) + 1
    stage = int(match.group(1))
    block = depths[stage] - 1 if match.group(2) is None else int(match.group(2))
    return sum(depths[:stage]) + block + 1


def in_encoder(name: str) -> bool:
    """Whether a parameter belongs to a FocalNet encoder (`focalnet.*` in every model of this library:
    classifier, SimMIM, backbone, UperNet, detector), as opposed to the heads, pyramids and norms around it."""
    return ".focalnet." in f".{name}"


def parameter_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None, base_lr: float, head_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW groups: (decay or not) x (depth, when `layer_decay` is set) x (encoder or head), each with its own lr.

    Layer-wise decay reads the block structure from a FocalNet model's `config.depths`; any other
    model trains with one learning rate. `head_lr_scale` multiplies the learning rate of every
    parameter outside the FocalNet encoder (mmsegmentation's `lr_mult` on the heads)."""
    depths: list[int] = []
    if layer_decay is not None:
        if not hasattr(model, "config"):
            raise ValueError(f"layer_decay needs a FocalNet model; {type(model).__name__} has no config.depths")
        depths = list(model.config.depths)
    has_encoder = any(in_encoder(name) for name, _ in model.named_parameters())
    groups: dict[tuple[bool, int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = 0 if layer_decay is None else layer_depth(name, depths)
        no_decay = skips_weight_decay(name, parameter)
        head = has_encoder and not in_encoder(name)
        if (no_decay, depth, head) not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (sum(depths) + 1 - depth)
            groups[no_decay, depth, head] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": base_lr * scale * (head_lr_scale if head else 1.0),
            }
        groups[no_decay, depth, head]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def warmup_cosine(total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float, min_lr: float):
    """LambdaLR factor: linear from warmup_lr to base_lr over the warm-up, then cosine to min_lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            lr = warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
        else:
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
        return lr / base_lr

    return factor


def warmup_steps_decay(decay_steps: list[int], warmup_steps: int, base_lr: float, warmup_lr: float, gamma: float = 0.1):
    """LambdaLR factor: linear warm-up, then the rate times `gamma` at each of `decay_steps` (the
    detection schedule: epochs 9 and 11 of 12)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (warmup_lr + (base_lr - warmup_lr) * step / warmup_steps) / base_lr
        return gamma ** sum(step >= boundary for boundary in decay_steps)

    return factor


def warmup_poly(total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float, min_lr: float, power: float):
    """LambdaLR factor of mmsegmentation's schedule: (base_lr - min_lr) (1 - step / total)^power + min_lr,
    scaled during the warm-up by a factor rising linearly from warmup_lr / base_lr to 1."""

    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        lr = (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
        if step < warmup_steps:
            start = warmup_lr / base_lr
            lr *= start + (1.0 - start) * step / warmup_steps
        return lr / base_lr

    return factor


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None, betas, head_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    groups = parameter_groups(model, weight_decay, layer_decay, lr, head_lr_scale)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights (and buffers), updated after each step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
