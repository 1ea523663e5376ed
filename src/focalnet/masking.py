"""SimMIM's random masks: a coarse grid of mask cells, a fixed share of them hidden, laid onto
the stem's patch grid (what `FocalNetForMaskedImageModeling` takes as `bool_masked_pos`)."""

from __future__ import annotations

import math

import torch


def _size_2d(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {value!r}")
    return pair


class MaskGenerator:
    """Masks for SimMIM pretraining, one (height // model_patch_size, width // model_patch_size) bool
    grid per call, True where the stem patch is hidden.

    The image is cut into `mask_patch_size` cells; exactly ceil(cells * mask_ratio) of them, chosen
    uniformly at random, are masked, each covering (mask_patch_size / model_patch_size)^2 stem patches.
    Defaults are SimMIM's: 32-pixel cells over a patch-4 model, 60% hidden.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
    ) -> None:
        self.input_size = _size_2d(input_size, "input_size")
        if not (isinstance(mask_patch_size, int) and mask_patch_size > 0):
            raise ValueError(f"mask_patch_size must be a positive int, got {mask_patch_size!r}")
        if not (isinstance(model_patch_size, int) and model_patch_size > 0):
            raise ValueError(f"model_patch_size must be a positive int, got {model_patch_size!r}")
        if not 0 <= mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        height, width = self.input_size
        if height % mask_patch_size or width % mask_patch_size:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of mask_patch_size={mask_patch_size}; "
                "choose an image size or a mask patch size that divides it"
            )
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size={mask_patch_size} is not a multiple of model_patch_size={model_patch_size}; "
                "a mask cell must cover whole stem patches"
            )
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.cells = (height // mask_patch_size, width // mask_patch_size)
        self.scale = mask_patch_size // model_patch_size
        self.num_masked = math.ceil(self.cells[0] * self.cells[1] * mask_ratio)

    @property
    def shape(self) -> tuple[int, int]:
        """The returned mask's shape: the stem's patch grid."""
        return self.cells[0] * self.scale, self.cells[1] * self.scale

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        order = torch.randperm(self.cells[0] * self.cells[1], generator=generator)
        coarse = torch.zeros(self.cells[0] * self.cells[1], dtype=torch.bool)
        coarse[order[: self.num_masked]] = True
        coarse = coarse.view(self.cells)
        return coarse.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio})"
        )
