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


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float | None, base_lr: float) -> list[dict]:
    """AdamW groups: (decay or not) x (depth, when `layer_decay` is set), each with its own lr.

    Layer-wise decay reads the block structure from a FocalNet model's `config.depths`; any other
    model trains with one learning rate."""
    depths: list[int] = []
    if layer_decay is not None:
        if not hasattr(model, "config"):
            raise ValueError(f"layer_decay needs a FocalNet model; {type(model).__name__} has no config.depths")
        depths = list(model.config.depths)
    groups: dict[tuple[bool, int], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = 0 if layer_decay is None else layer_depth(name, depths)
        no_decay = skips_weight_decay(name, parameter)
        if (no_decay, depth) not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (sum(depths) + 1 - depth)
            groups[no_decay, depth] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": base_lr * scale,
            }
        groups[no_decay, depth]["params"].append(parameter)
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


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None, betas
) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, weight_decay, layer_decay, lr), lr=lr, betas=tuple(betas))


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights (and buffers), updated after each step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
