"""`output_modulators=True`: each block's modulator and gates, checked against hooks inside it."""

from __future__ import annotations

import torch

import focalnet
from conftest import assert_close, randomize_, tiny_config


def test_modulators_and_gates_are_the_ones_used() -> None:
    config = tiny_config(depths=[2, 1], focal_levels=[2, 3])
    model = randomize_(focalnet.FocalNetForImageClassification(config)).eval()
    captured = []  # (projection_in output, projection_out input) per block, in order
    for stage in model.focalnet.encoder.stages:
        for block in stage.layers:
            record = {}
            block.modulation.projection_in.register_forward_hook(lambda m, i, o, r=record: r.update(proj_in=o))
            block.modulation.projection_out.register_forward_hook(lambda m, i, o, r=record: r.update(proj_out_in=i[0]))
            captured.append((block, record))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 24), output_modulators=True)
    assert len(out.modulators) == len(out.gates) == 3
    expected_shapes = [((2, 16, 10, 6), (2, 3, 10, 6))] * 2 + [((2, 32, 5, 3), (2, 4, 5, 3))]
    for (modulator, gates), (block, record), shapes in zip(
        zip(out.modulators, out.gates, strict=True), captured, expected_shapes, strict=True
    ):
        assert (tuple(modulator.shape), tuple(gates.shape)) == shapes
        dim = block.modulation.dim
        query = record["proj_in"][..., :dim]
        assert_close(record["proj_in"][..., 2 * dim :].permute(0, 3, 1, 2), gates, what="gates")
        assert_close(query * modulator.permute(0, 2, 3, 1), record["proj_out_in"], what="query * modulator")


def test_modulators_do_not_change_outputs_and_are_off_by_default() -> None:
    model = randomize_(focalnet.FocalNetModel(tiny_config())).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixels)
        with_modulators = model(pixels, output_modulators=True)
    assert plain.modulators is None and plain.gates is None
    assert torch.equal(plain.last_hidden_state, with_modulators.last_hidden_state)
