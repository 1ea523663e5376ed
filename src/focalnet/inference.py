"""`fuse_for_inference`: fold constant scalings into neighbouring weights, once, for serving.

Folded, per block: LayerScale (`gamma`) into the product or LayerNorm it scales, the modulator
normalisation 1/(L+1) into `projection_context`, and the affine part of each pre-norm
LayerNorm into the product that reads it. Outputs stay the same up to float rounding; the
model then has fewer parameters and no longer matches the HF state-dict layout, so it is
marked `is_fused` and refuses `save_pretrained` (save before fusing).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import FocalNetBlock


@torch.no_grad()
def _scale_output(layer: nn.Linear | nn.LayerNorm, gamma: torch.Tensor) -> None:
    """layer(x) * gamma, folded into the layer's weight and bias."""
    layer.weight.mul_(gamma[:, None] if layer.weight.ndim == 2 else gamma)
    layer.bias.mul_(gamma)


@torch.no_grad()
def _absorb_layernorm_affine(norm: nn.LayerNorm, layer: nn.Linear) -> None:
    """layer(norm(x)) with norm's scale and shift moved into layer; norm keeps only the normalisation."""
    layer.bias.add_(layer.weight @ norm.bias)
    layer.weight.mul_(norm.weight[None, :])
    norm.weight.fill_(1.0)
    norm.bias.zero_()


def fuse_block(block: FocalNetBlock) -> None:
    modulation = block.modulation
    if modulation.normalize_modulator:
        with torch.no_grad():
            modulation.projection_context.weight.div_(modulation.focal_level + 1)
        modulation.normalize_modulator = False
    if block.use_post_layernorm:  # x + gamma * norm(branch): gamma scales the norm's output
        scaled_1, scaled_2 = block.norm1, block.norm2
    else:  # x + gamma * proj(..): gamma scales the last product; the norms feed the first ones
        scaled_1, scaled_2 = modulation.projection_out, block.mlp.fc2
        _absorb_layernorm_affine(block.norm1, modulation.projection_in)
        _absorb_layernorm_affine(block.norm2, block.mlp.fc1)
    if block.gamma_1 is not None:
        _scale_output(scaled_1, block.gamma_1)
        _scale_output(scaled_2, block.gamma_2)
        block.gamma_1 = block.gamma_2 = None


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every block of `model` in place; returns the model, in eval mode."""
    for module in model.modules():
        if isinstance(module, FocalNetBlock):
            fuse_block(module)
    model.is_fused = True
    return model.eval()
