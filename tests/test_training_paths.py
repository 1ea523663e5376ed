"""Backward, gradient checkpointing, weight init, torch.compile and torch.export."""

from __future__ import annotations

import pytest
import torch

import focalnet
from conftest import assert_close, randomize_, tiny_config

pytestmark = pytest.mark.numerics


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_backward_reaches_every_parameter() -> None:
    model = focalnet.FocalNetForImageClassification(tiny_config(use_layerscale=True, use_post_layernorm=True)).train()
    loss = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])).loss
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_masked_image_modeling_backward_reaches_mask_token() -> None:
    model = focalnet.FocalNetForMaskedImageModeling(tiny_config()).train()
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    model(torch.randn(2, 3, 32, 32), bool_masked_pos=mask).loss.backward()
    assert model.focalnet.embeddings.mask_token.grad.abs().sum() > 0


def test_checkpointed_gradients_equal_plain_ones() -> None:
    config = tiny_config(depths=[2, 2], drop_path_rate=0.0, hidden_dropout_prob=0.0)
    model = randomize_(focalnet.FocalNetForImageClassification(config)).train()
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 0])
    model(pixels, labels=labels).loss.backward()
    plain = _grads(model)
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    recomputed = []
    # a pre-hook: recomputation stops early, before forward hooks would run
    block = model.focalnet.encoder.stages[0].layers[0]
    block.modulation.register_forward_pre_hook(lambda *args: recomputed.append("tokens"))
    block.mlp.register_forward_pre_hook(lambda *args: recomputed.append("channels"))
    model(pixels, labels=labels).loss.backward()
    assert sorted(recomputed) == ["channels", "channels", "tokens", "tokens"], "branches not re-run in backward"
    checkpointed = _grads(model)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert_close(plain[name], checkpointed[name], atol=1e-6, what=name)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_drop_path_and_dropout_only_in_training() -> None:
    model = focalnet.FocalNetModel(tiny_config(drop_path_rate=0.5, hidden_dropout_prob=0.3))
    pixels = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels).pooler_output, model(pixels).pooler_output)
        model.train()
        assert not torch.equal(model(pixels).pooler_output, model(pixels).pooler_output)


def test_drop_path_rates_grow_linearly_over_all_blocks() -> None:
    model = focalnet.FocalNetModel(tiny_config(depths=[2, 3], drop_path_rate=0.4))
    rates = [block.drop_path.drop_prob for stage in model.encoder.stages for block in stage.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_weight_init_follows_transformers() -> None:
    config = tiny_config(use_layerscale=True, layerscale_value=0.25, initializer_range=0.5, embed_dim=64)
    model = focalnet.FocalNetForMaskedImageModeling(config)
    block = model.focalnet.encoder.stages[0].layers[0]
    assert torch.all(block.gamma_1 == 0.25) and torch.all(block.gamma_2 == 0.25)
    assert torch.all(model.focalnet.embeddings.mask_token == 0)
    assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)
    assert torch.all(block.mlp.fc1.bias == 0)
    assert block.mlp.fc1.weight.std().item() == pytest.approx(0.5, rel=0.05)


def test_compile_fullgraph_static_and_dynamic() -> None:
    """Dynamo captures the whole model (no graph breaks), across input sizes without a recompile per size."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config())).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counting_backend)
    with torch.no_grad():
        for size in [(32, 32), (48, 40), (33, 17), (64, 57), (40, 96)]:
            pixels = torch.randn(2, 3, *size)
            assert_close(model(pixels).logits, compiled(pixels).logits, what=f"{size}")
    assert len(graphs) <= 2, f"{len(graphs)} graphs for 5 input sizes"


def _fused_calls(graph_module: torch.fx.GraphModule) -> int:
    fused = (torch.ops.focalnet.fused_block, torch.ops.focalnet.fused_block.default)
    return sum(node.target in fused for node in graph_module.graph.nodes)


@pytest.mark.skipif(not focalnet.fused._FUSED_DTYPES, reason="this torch build has no oneDNN fused kernels")
@pytest.mark.usefixtures("fuse_tiny_blocks")
def test_compiled_inference_keeps_each_block_one_fused_operator() -> None:
    """Under torch.compile, inference calls the fused block operator (not its oneDNN internals, which would
    break the graph); with gradients the graph holds the plain, differentiable block."""
    torch._dynamo.reset()
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config())).eval()
    compiled = torch.compile(model, fullgraph=True, backend=recording_backend)
    pixels = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        assert_close(model(pixels).logits, compiled(pixels).logits, what="compiled inference")
    assert _fused_calls(graphs[-1]) == sum(model.config.depths)
    assert_close(model(pixels).logits.detach(), compiled(pixels).logits.detach(), what="compiled with gradients")
    assert _fused_calls(graphs[-1]) == 0


def test_torch_export_holds_only_standard_operators() -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config())).eval()
    with torch.no_grad():
        exported = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("focalnet" in target or "mkldnn" in target for target in targets), targets


def _classification_outputs(model, pixels):
    return [model(pixels).logits]


def _backbone_outputs(model, pixels):
    return list(model(pixels).feature_maps)


def _masked_image_modeling_outputs(model, pixels):
    patches = (pixels.shape[-2] // 4) * (pixels.shape[-1] // 4)
    mask = torch.arange(patches).expand(pixels.shape[0], -1) % 3 == 0
    output = model(pixels, bool_masked_pos=mask)
    return [output.reconstruction, output.loss]


COMPILED_CLASSES = {
    "classification": (focalnet.FocalNetForImageClassification, _classification_outputs),
    "backbone": (focalnet.FocalNetBackbone, _backbone_outputs),
    "masked-image-modeling": (focalnet.FocalNetForMaskedImageModeling, _masked_image_modeling_outputs),
}


@pytest.mark.slow
@pytest.mark.usefixtures("fuse_tiny_blocks")
@pytest.mark.parametrize("name", COMPILED_CLASSES)
def test_inductor_compiled_model_equals_eager_at_two_sizes(name: str) -> None:
    """Default `torch.compile` (inductor; the fused block operator under no_grad) matches eager within 1e-5."""
    torch._dynamo.reset()
    model_class, outputs = COMPILED_CLASSES[name]
    config = tiny_config(depths=[1, 1], out_features=["stage1", "stage2"])
    model = randomize_(model_class(config), scale=0.15).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        for size in [(32, 32), (48, 40)]:
            pixels = torch.randn(2, 3, *size)
            expected, got = outputs(model, pixels), outputs(compiled, pixels)
            for i, (a, b) in enumerate(zip(expected, got, strict=True)):
                assert_close(a, b, atol=1e-5, what=f"{name} {size} output {i}")


def test_torch_export_round_trip() -> None:
    model = randomize_(focalnet.FocalNetForMaskedImageModeling(tiny_config())).eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 64) < 0.5
    exported = torch.export.export(model, (pixels,), {"bool_masked_pos": mask})
    with torch.no_grad():
        expected = model(pixels, bool_masked_pos=mask)
    got = exported.module()(pixels, bool_masked_pos=mask)
    assert isinstance(got, focalnet.FocalNetMaskedImageModelingOutput)
    assert_close(expected.reconstruction, got.reconstruction, what="reconstruction")
    assert_close(expected.loss, got.loss, what="loss")
