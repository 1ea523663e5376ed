"""`focalnet.MaskGenerator`: SimMIM's masks (SPEC section 8)."""

from __future__ import annotations

import math

import pytest
import torch

from focalnet import MaskGenerator


@pytest.mark.parametrize(
    ("input_size", "mask_patch", "model_patch", "ratio", "cells"),
    [
        (192, 32, 4, 0.6, (6, 6)),  # SimMIM's default at 192 px: 22 of 36 cells (61.1%)
        (224, 32, 4, 0.6, (7, 7)),  # 30 of 49
        ((96, 160), 32, 4, 0.6, (3, 5)),  # not square
        ((64, 32), 16, 2, 0.3, (4, 2)),
        (32, 8, 8, 0.5, (4, 4)),  # one stem patch per cell
    ],
)
def test_masks_have_the_exact_count_shape_and_block_structure(
    input_size, mask_patch: int, model_patch: int, ratio: float, cells: tuple[int, int]
) -> None:
    generator = MaskGenerator(input_size, mask_patch, model_patch, ratio)
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    scale = mask_patch // model_patch
    assert generator.shape == (height // model_patch, width // model_patch)
    for seed in range(5):
        mask = generator(torch.Generator().manual_seed(seed))
        assert mask.dtype == torch.bool and tuple(mask.shape) == generator.shape
        blocks = mask.view(cells[0], scale, cells[1], scale)
        coarse = blocks[:, 0, :, 0]
        # every coarse cell is wholly masked or wholly visible
        assert torch.equal(blocks, coarse[:, None, :, None].expand_as(blocks))
        assert int(coarse.sum()) == math.ceil(cells[0] * cells[1] * ratio)
        assert int(mask.sum()) == math.ceil(cells[0] * cells[1] * ratio) * scale * scale


def test_default_192_masks_22_of_36_cells() -> None:
    mask = MaskGenerator(192)(torch.Generator().manual_seed(0))
    assert mask.shape == (48, 48) and int(mask.sum()) == 22 * 8 * 8


def test_seeded_masks_repeat_and_differ_between_seeds() -> None:
    generator = MaskGenerator(128, 32, 4, 0.6)
    first = generator(torch.Generator().manual_seed(7))
    assert torch.equal(first, generator(torch.Generator().manual_seed(7)))
    others = [generator(torch.Generator().manual_seed(seed)) for seed in range(8, 16)]
    assert any(not torch.equal(first, other) for other in others)
    # without a generator the global RNG decides (what a seeded data loader relies on)
    torch.manual_seed(3)
    a = generator()
    torch.manual_seed(3)
    assert torch.equal(a, generator())


def test_choices_are_uniform_over_cells() -> None:
    generator = MaskGenerator(64, 32, 4, 0.5)  # 2x2 cells, 2 masked each time
    rng = torch.Generator().manual_seed(0)
    counts = torch.stack([generator(rng)[::8, ::8] for _ in range(2000)]).float().mean(0)
    assert torch.allclose(counts, torch.full((2, 2), 0.5), atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(input_size=200), "200x200 is not a multiple of mask_patch_size=32"),
        (dict(input_size=(192, 100)), "192x100 is not a multiple of mask_patch_size=32"),
        (dict(input_size=96, mask_patch_size=24, model_patch_size=16), "24 is not a multiple of model_patch_size=16"),
        (dict(input_size=96, mask_ratio=1.5), "mask_ratio"),
        (dict(input_size=(96, 96, 3)), "input_size"),
        (dict(input_size=96, mask_patch_size=0), "mask_patch_size"),
    ],
)
def test_bad_sizes_raise_value_errors_naming_the_numbers(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskGenerator(**kwargs)
