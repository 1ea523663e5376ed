"""`output_modulators=True`: each block's modulator and gates, checked against hooks inside it."""

from __future__ import annotations

import pytest
import torch

import focalnet
from conftest import assert_close, randomize_, tiny_config

pytestmark = pytest.mark.numerics


def test_modulators_and_gates_are_the_ones_used() -> None:
    """Rebuild each block's modulation output from its input and the returned modulator and gates."""
    config = tiny_config(depths=[2, 1], focal_levels=[2, 3])
    model = randomize_(focalnet.FocalNetForImageClassification(config), scale=0.15).eval()
    captured = []  # (modulation module, its input, its output) per block, in order
    for stage in model.focalnet.encoder.stages:
        for block in stage.layers:
            block.modulation.register_forward_hook(
                lambda module, args, output: captured.append((module, args[0], output[0]))
            )
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 24), output_modulators=True)
        assert len(out.modulators) == len(out.gates) == len(captured) == 3
        expected_shapes = [((2, 16, 10, 6), (2, 3, 10, 6))] * 2 + [((2, 32, 5, 3), (2, 4, 5, 3))]
        for modulator, gates, (module, inputs, output), shapes in zip(
            out.modulators, out.gates, captured, expected_shapes, strict=True
        ):
            assert (tuple(modulator.shape), tuple(gates.shape)) == shapes
            projected = torch.nn.functional.linear(inputs, module.projection_in.weight, module.projection_in.bias)
            assert_close(projected[..., 2 * module.dim :].permute(0, 3, 1, 2), gates, what="gates")
            query = projected[..., : module.dim]
            rebuilt = module.projection_out(query * modulator.permute(0, 2, 3, 1))
            assert_close(rebuilt, output, what="output")


def test_modulators_do_not_change_outputs_and_are_off_by_default() -> None:
    model = randomize_(focalnet.FocalNetModel(tiny_config())).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixels)
        with_modulators = model(pixels, output_modulators=True)
    assert plain.modulators is None and plain.gates is None
    assert torch.equal(plain.last_hidden_state, with_modulators.last_hidden_state)
