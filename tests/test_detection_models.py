"""FocalNet detectors on torchvision (focalnet.detection): builders, pyramid, freezing, checkpointing,
backbones from classifier / timm / original mmdet checkpoints, save/load round trips and argument errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from timm.models.focalnet import FocalNet as TimmFocalNet
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

import focalnet
import focalnet.modeling
from conftest import assert_close, randomize_
from focalnet.detection import (
    FocalNetFPN,
    build_detector,
    dense_backbone,
    fasterrcnn_focalnet,
    from_pretrained,
    is_detector_directory,
    maskrcnn_focalnet,
    retinanet_focalnet,
    save_pretrained,
)
from focalnet.formats import hf_to_original

pytestmark = pytest.mark.numerics

SMALL = {"embed_dim": 16, "depths": [1, 1, 1, 1]}
DETERMINISTIC = {**SMALL, "drop_path_rate": 0.0}
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]
SIZES = {"min_size": 96, "max_size": 160}
CLASSES = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN, "retinanet": RetinaNet}
# few proposals and samples keep CPU time low; a zero score threshold keeps eval outputs non-empty
_RCNN = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 10,
    "box_score_thresh": 0.0,
}
QUICK = {
    "faster_rcnn": _RCNN,
    "mask_rcnn": _RCNN,
    "retinanet": {"score_thresh": 0.0, "topk_candidates": 100, "detections_per_img": 10},
}
LOSS_KEYS = {
    "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "mask_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "retinanet": {"classification", "bbox_regression"},
}


def _detector(architecture: str, overrides: dict | None = None, **kwargs):
    arguments = {"categories": CATEGORIES, "fpn_channels": 32, **SIZES, **QUICK[architecture], **kwargs}
    return build_detector(architecture, "focalnet-tiny", backbone_overrides=overrides or SMALL, **arguments)


def _images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) for h, w in [(64, 80), (96, 72), (72, 100)]]


def _targets(images: list[torch.Tensor], masks: bool = False) -> list[dict[str, torch.Tensor]]:
    """Two boxes in the first image, one in the second, none in the third."""
    boxes = [[[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 40.0]], [[10.0, 20.0, 60.0, 90.0]], []]
    labels = [[1, 3], [2], []]
    targets = []
    for image, box, label in zip(images, boxes, labels, strict=True):
        target = {"boxes": torch.tensor(box).reshape(-1, 4), "labels": torch.tensor(label, dtype=torch.int64)}
        if masks:
            grid = torch.zeros(len(box), *image.shape[1:], dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(box):
                grid[i, int(y0) : int(y1), int(x0) : int(x1)] = 1
            target["masks"] = grid
        targets.append(target)
    return targets


def _eval_outputs(model, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    model.eval()
    with torch.no_grad():
        return model(images)


# ------------------------------------------------------------------------------------------------
# 1. builders: torchvision's classes, training losses on mixed sizes, eval outputs
@pytest.mark.parametrize(
    ("architecture", "builder"),
    [("faster_rcnn", fasterrcnn_focalnet), ("mask_rcnn", maskrcnn_focalnet), ("retinanet", retinanet_focalnet)],
)
def test_builders_train_and_predict(architecture: str, builder) -> None:
    """Each builder gives torchvision's class on a FocalNetFPN; it trains on different-sized images (one
    without boxes) with finite losses reaching the backbone, and predicts per image at each input's size."""
    model = builder("focalnet-tiny", 4, fpn_channels=32, backbone_overrides=SMALL, **SIZES, **QUICK[architecture])
    assert isinstance(model, CLASSES[architecture])
    assert isinstance(model.backbone, FocalNetFPN)
    assert model.backbone.out_channels == 32
    assert model.detector_config.architecture == architecture
    assert model.detector_config.num_classes == 4

    images = _images()
    model.train()
    losses = model(images, _targets(images, masks=architecture == "mask_rcnn"))
    assert set(losses) == LOSS_KEYS[architecture]
    assert all(torch.isfinite(loss) for loss in losses.values()), losses
    sum(losses.values()).backward()
    stem = model.backbone.body.focalnet.embeddings.patch_embeddings.projection.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0

    outputs = _eval_outputs(model, images)
    assert len(outputs) == len(images)
    for image, output in zip(images, outputs, strict=True):
        height, width = image.shape[1:]
        count = output["boxes"].shape[0]
        assert count > 0
        assert output["boxes"].shape == (count, 4)
        assert output["scores"].shape == output["labels"].shape == (count,)
        assert (output["labels"] >= 0).all() and (output["labels"] < 4).all()
        assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        if architecture == "mask_rcnn":
            assert output["masks"].shape == (count, 1, height, width)
        else:
            assert "masks" not in output


# ------------------------------------------------------------------------------------------------
# 2. the pyramid
def test_fpn_levels_channels_and_strides() -> None:
    """Faster R-CNN's pyramid: "0".."3" + "pool" at strides 4..64 for a 128x96 input, fpn_channels wide."""
    model = _detector("faster_rcnn")
    model.eval()
    with torch.no_grad():
        maps = model.backbone(torch.rand(2, 3, 128, 96))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    sizes = {name: tuple(value.shape) for name, value in maps.items()}
    assert sizes == {
        "0": (2, 32, 32, 24),
        "1": (2, 32, 16, 12),
        "2": (2, 32, 8, 6),
        "3": (2, 32, 4, 3),
        "pool": (2, 32, 2, 2),
    }


def test_retinanet_pyramid_is_stages_2_to_4_plus_p6_p7() -> None:
    """RetinaNet taps stages 2-4 (strides 8-32) and adds P6, P7 (strides 64, 128)."""
    model = _detector("retinanet")
    body = model.backbone.body
    assert body.out_features == ["stage2", "stage3", "stage4"]
    assert sorted(body.hidden_states_norms) == ["stage2", "stage3", "stage4"]
    model.eval()
    with torch.no_grad():
        maps = model.backbone(torch.rand(1, 3, 128, 128))
    assert [(name, tuple(value.shape[1:])) for name, value in maps.items()] == [
        ("0", (32, 16, 16)),
        ("1", (32, 8, 8)),
        ("2", (32, 4, 4)),
        ("p6", (32, 2, 2)),
        ("p7", (32, 1, 1)),
    ]


def test_fpn_rejects_a_backbone_with_other_stages() -> None:
    """A backbone returning other stages than the pyramid needs is refused, naming the fix."""
    backbone = dense_backbone("focalnet-tiny", (2, 3, 4), **SMALL)
    with pytest.raises(ValueError, match="out_features="):
        FocalNetFPN(backbone, 32, stages=(1, 2, 3, 4))


# ------------------------------------------------------------------------------------------------
# 3. trainable_stages
def _param_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def test_trainable_stages_freezes_stem_and_lower_stages() -> None:
    """trainable_stages=2: after two large AdamW steps over ALL parameters, the stem and stages 0, 1 are
    bit-identical (no gradients), stages 2, 3 and the norms moved; frozen modules stay in eval mode."""
    model = _detector("faster_rcnn", trainable_stages=2)
    encoder = model.backbone.body.focalnet
    frozen = {"stem": encoder.embeddings, "stage0": encoder.encoder.stages[0], "stage1": encoder.encoder.stages[1]}
    trained = {"stage2": encoder.encoder.stages[2], "stage3": encoder.encoder.stages[3]}
    assert all(not p.requires_grad for module in frozen.values() for p in module.parameters())
    assert all(p.requires_grad for module in trained.values() for p in module.parameters())
    before = {name: _param_snapshot(module) for name, module in {**frozen, **trained}.items()}
    norms_before = _param_snapshot(model.backbone.body.hidden_states_norms)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    images = _images()
    targets = _targets(images)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()

    for name, module in frozen.items():
        for key, value in module.named_parameters():
            assert value.grad is None, f"{name}.{key} got a gradient"
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
        assert not any(m.training for m in module.modules()), f"{name} is in training mode"
    for name, module in trained.items():
        for key, value in module.named_parameters():
            assert not torch.equal(value, before[name][key]), f"{name}.{key} did not change"
        assert all(m.training for m in module.modules())
    for key, value in model.backbone.body.hidden_states_norms.named_parameters():
        assert not torch.equal(value, norms_before[key]), f"output norm {key} did not change"

    model.eval()
    model.train()  # toggling again keeps the frozen part in eval mode
    assert not encoder.encoder.stages[1].training and encoder.encoder.stages[2].training


@pytest.mark.parametrize(("stages", "frozen_prefixes"), [(4, ()), (0, ("embeddings.", "encoder.stages."))])
def test_trainable_stages_bounds(stages: int, frozen_prefixes: tuple[str, ...]) -> None:
    """trainable_stages=4 freezes only the encoder's unused final layernorm; 0 freezes the stem and every stage
    but never the output norms or the pyramid."""
    model = _detector("faster_rcnn", trainable_stages=stages)
    frozen = {name for name, p in model.backbone.body.focalnet.named_parameters() if not p.requires_grad}
    expected = {"layernorm.weight", "layernorm.bias"}
    expected |= {
        name for name, _ in model.backbone.body.focalnet.named_parameters() if name.startswith(frozen_prefixes)
    }
    assert frozen == expected
    assert all(p.requires_grad for p in model.backbone.body.hidden_states_norms.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.rpn.parameters())


@pytest.mark.parametrize("stages", [5, -1])
def test_trainable_stages_out_of_range(stages: int) -> None:
    with pytest.raises(ValueError, match=r"trainable_stages must be in 0\.\.4"):
        _detector("faster_rcnn", trainable_stages=stages)


# ------------------------------------------------------------------------------------------------
# 4. gradient checkpointing
def test_gradient_checkpointing_gives_same_loss_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same weights with and without gradient_checkpointing: equal losses and gradients, and the
    checkpointed run really went through torch.utils.checkpoint."""
    plain = _detector("faster_rcnn", DETERMINISTIC)
    checkpointed = _detector("faster_rcnn", DETERMINISTIC, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.backbone.body.is_gradient_checkpointing
    assert not plain.backbone.body.is_gradient_checkpointing

    calls = []
    original = focalnet.modeling.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(focalnet.modeling, "checkpoint", counting)
    images = _images()
    targets = _targets(images)
    results = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)  # the RPN and RoI samplers draw random indices
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    assert len(calls) == 2 * 4  # two branches for each of the four blocks, in the second model only

    (plain_losses, plain_grads), (ckpt_losses, ckpt_grads) = results
    assert plain_losses.keys() == ckpt_losses.keys()
    for key in plain_losses:
        assert_close(plain_losses[key], ckpt_losses[key], atol=1e-5, what=key)
    assert plain_grads.keys() == ckpt_grads.keys()
    assert any(name.startswith("backbone.body.focalnet.encoder.") for name in plain_grads)
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], ckpt_grads[name], atol=1e-5), name


# ------------------------------------------------------------------------------------------------
# 5. backbones from a classifier (HF layout) and a timm weights file
def _padded_at_centre(kernel: torch.Tensor, size: int) -> torch.Tensor:
    expected = kernel.new_zeros((*kernel.shape[:-2], size, size))
    offset = (size - kernel.shape[-1]) // 2
    expected[..., offset : offset + kernel.shape[-2], offset : offset + kernel.shape[-1]] = kernel
    return expected


@pytest.fixture
def classifier_dir(tmp_path: Path) -> tuple[Path, focalnet.FocalNetForImageClassification]:
    config = focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], focal_windows=[3, 3, 3, 3], num_labels=5)
    classifier = randomize_(focalnet.FocalNetForImageClassification(config)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    return tmp_path / "classifier", classifier


def test_backbone_from_classifier_expands_focal_kernels(classifier_dir) -> None:
    """Every encoder tensor of the classifier lands in the detector; focal kernels 3 and 5 are zero-padded
    at the centre to 9 and 11, which leaves the encoder's output unchanged."""
    directory, classifier = classifier_dir
    with pytest.warns(UserWarning, match="hidden_states_norms"):
        model = fasterrcnn_focalnet(directory, categories=CATEGORIES, fpn_channels=32, **SIZES)
    body = model.backbone.body.state_dict()
    encoder_keys = [key for key in classifier.state_dict() if key.startswith("focalnet.")]
    assert sorted(k for k in body if not k.startswith("hidden_states_norms.")) == sorted(encoder_keys)
    padded = 0
    for key in encoder_keys:
        source = classifier.state_dict()[key]
        if ".focal_layers." in key:
            level = int(key.split(".focal_layers.")[1].split(".")[0])
            assert body[key].shape[-1] == 9 + 2 * level
            assert torch.equal(body[key], _padded_at_centre(source, 9 + 2 * level)), key
            padded += 1
        else:
            assert torch.equal(body[key], source), key
    assert padded == 4 * 2  # two levels in each of the four blocks

    pixels = torch.randn(2, 3, 96, 64)
    encoder = model.backbone.body.focalnet.eval()
    with torch.no_grad():
        expected = classifier.focalnet(pixels, output_hidden_states=True)
        found = encoder(pixels, output_hidden_states=True)
    assert_close(found.last_hidden_state, expected.last_hidden_state, what="last_hidden_state")
    for i, (a, b) in enumerate(zip(found.hidden_states, expected.hidden_states, strict=True)):
        assert_close(a, b, what=f"hidden state {i}")


def test_backbone_from_classifier_keeps_windows_when_asked(classifier_dir) -> None:
    """backbone_overrides focal_windows=[3]*4 loads the classifier's kernels unchanged."""
    directory, classifier = classifier_dir
    with pytest.warns(UserWarning):
        model = fasterrcnn_focalnet(
            directory, categories=CATEGORIES, fpn_channels=32, backbone_overrides={"focal_windows": [3] * 4}, **SIZES
        )
    body = model.backbone.body.state_dict()
    assert model.backbone.body.config.focal_windows == [3, 3, 3, 3]
    for key, value in classifier.state_dict().items():
        if key.startswith("focalnet."):
            assert torch.equal(body[key], value), key


def test_backbone_from_timm_weights_file(tmp_path: Path) -> None:
    """A timm-layout .safetensors: the detector's encoder holds what FocalNetBackbone.from_pretrained reads
    (kernels expanded to 9/11) and its output equals timm's forward_features."""
    from safetensors.torch import save_file

    timm_model = randomize_(TimmFocalNet(embed_dim=16, depths=(1, 1, 1, 1), num_classes=0)).eval()
    path = tmp_path / "timm_focalnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))

    overrides = {"normalize_modulator": False}  # tensors cannot show it and no published checkpoint matches
    with pytest.warns(UserWarning):
        model = retinanet_focalnet(path, categories=CATEGORIES, fpn_channels=32, backbone_overrides=overrides)
    reference = focalnet.FocalNetBackbone.from_pretrained(
        path, expand_focal=True, focal_windows=[9] * 4, out_features=["stage2", "stage3", "stage4"], **overrides
    )
    body = model.backbone.body.focalnet.state_dict()
    expected = reference.focalnet.state_dict()
    assert body.keys() == expected.keys()
    for key in expected:
        assert torch.equal(body[key], expected[key]), key
    assert body["encoder.stages.0.layers.0.modulation.focal_layers.1.0.weight"].shape[-1] == 11

    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        timm_out = timm_model.forward_features(pixels).flatten(2).transpose(1, 2)
        ours = model.backbone.body.focalnet.eval()(pixels).last_hidden_state
    assert_close(ours, timm_out, what="timm forward_features")


# ------------------------------------------------------------------------------------------------
# 6. original (mmdet) detection checkpoints
ORIGINAL_ARCH = {**SMALL, "focal_levels": [2] * 4, "focal_windows": [9] * 4}
ORIGINAL_FLAGS = {"use_post_layernorm": False, "normalize_modulator": False}


@pytest.fixture
def mmdet_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A .pth as the original detection code writes it: backbone in the original layout under `backbone.`,
    its output norms norm0..3, and neck/RPN/RoI heads beside it."""
    encoder = randomize_(focalnet.FocalNetModel(focalnet.FocalNetConfig(**ORIGINAL_ARCH)))
    hf_state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("layernorm.")}
    original = hf_to_original(hf_state)
    assert "patch_embed.proj.weight" in original and "layers.0.blocks.0.modulation.f.weight" in original
    generator = torch.Generator().manual_seed(3)
    norms = {}
    for i, width in enumerate([16, 32, 64, 128]):
        norms[f"norm{i}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
        norms[f"norm{i}.bias"] = 0.1 * torch.randn(width, generator=generator)
    state = {f"backbone.{k}": v for k, v in {**original, **norms}.items()}
    state.update(
        {
            "neck.lateral_convs.0.conv.weight": torch.randn(256, 16, 1, 1),
            "rpn_head.rpn_conv.weight": torch.randn(256, 256, 3, 3),
            "roi_head.bbox_head.fc_cls.weight": torch.randn(81, 1024),
        }
    )
    path = tmp_path / "mask_rcnn_focalnet_coco.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 12, "mmdet_version": "2.x"}}, path)
    return path, hf_state, norms


def test_original_detection_checkpoint_loads(mmdet_checkpoint) -> None:
    """dense_backbone and the builders read the backbone, map norm0..3 to hidden_states_norms.stage1..4
    and ignore the mmdet heads."""
    path, hf_state, norms = mmdet_checkpoint
    backbone = dense_backbone(path, **ORIGINAL_FLAGS)
    model = fasterrcnn_focalnet(path, categories=CATEGORIES, fpn_channels=32, backbone_overrides=ORIGINAL_FLAGS)
    for body in (backbone, model.backbone.body):
        state = body.state_dict()
        for key, value in hf_state.items():
            assert torch.equal(state[f"focalnet.{key}"], value), key
        for i in range(4):
            for part in ("weight", "bias"):
                assert torch.equal(state[f"hidden_states_norms.stage{i + 1}.{part}"], norms[f"norm{i}.{part}"])
        assert not any(key.startswith(("neck", "rpn_head", "roi_head")) for key in state)
    assert backbone.config.focal_windows == [9] * 4
    assert backbone.config.use_backbone_layernorm


def test_original_checkpoint_without_flags_names_them(mmdet_checkpoint) -> None:
    """No config.json and no published match: the error says which hidden flags to pass."""
    path, _, _ = mmdet_checkpoint
    with pytest.raises(focalnet.CheckpointError, match="use_post_layernorm=True/False, normalize_modulator"):
        fasterrcnn_focalnet(path, categories=CATEGORIES, fpn_channels=32)


def test_original_checkpoint_with_mismatching_override(mmdet_checkpoint) -> None:
    """An architecture override the tensors contradict is reported by field name."""
    path, _, _ = mmdet_checkpoint
    with pytest.raises(focalnet.CheckpointError, match="embed_dim: config 32 vs weights 16"):
        fasterrcnn_focalnet(path, categories=CATEGORIES, backbone_overrides={**ORIGINAL_FLAGS, "embed_dim": 32})


# ------------------------------------------------------------------------------------------------
# 7. save_pretrained / from_pretrained
@pytest.mark.parametrize("architecture", list(CLASSES))
def test_save_and_load_round_trip(architecture: str, tmp_path: Path) -> None:
    """Saved and reloaded: the same class, config and eval outputs bit for bit; config.json holds the
    sparse category ids and the torchvision arguments; only the two files are written."""
    model = _detector(architecture, image_mean=[0.5, 0.4, 0.3])
    randomize_(model.backbone)
    save_pretrained(model, tmp_path / "detector")
    assert sorted(p.name for p in (tmp_path / "detector").iterdir()) == ["config.json", "model.safetensors"]
    assert is_detector_directory(tmp_path / "detector")

    saved = json.loads((tmp_path / "detector" / "config.json").read_text())
    assert saved["format"] == "focalnet-detector/1"
    assert saved["architecture"] == architecture
    assert saved["categories"] == CATEGORIES
    assert saved["torchvision_kwargs"] == {**SIZES, **QUICK[architecture], "image_mean": [0.5, 0.4, 0.3]}
    assert saved["custom_arguments"] == []
    assert saved["backbone_config"]["embed_dim"] == 16
    assert saved["fpn_channels"] == 32

    loaded = from_pretrained(tmp_path / "detector")
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.detector_config == model.detector_config
    assert loaded.detector_config.label_to_category == [0, 1, 3, 7]
    assert loaded.transform.image_mean == [0.5, 0.4, 0.3]
    assert loaded.state_dict().keys() == model.state_dict().keys()
    images = _images(seed=5)
    expected, found = _eval_outputs(model, images), _eval_outputs(loaded, images)
    for a, b in zip(expected, found, strict=True):
        assert a.keys() == b.keys()
        assert a["boxes"].shape[0] > 0
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_save_and_load_with_frozen_stages(tmp_path: Path) -> None:
    """A detector with frozen stages (trainable_stages < 4, the usual fine-tuning setup) saves and reloads
    with its freezing and weights. Fails at the time of writing: see the report on `FocalNetFPN.frozen`."""
    model = _detector("faster_rcnn", trainable_stages=2)
    randomize_(model.backbone)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path)
    assert loaded.detector_config.trainable_stages == 2
    assert not any(p.requires_grad for p in loaded.backbone.body.focalnet.encoder.stages[1].parameters())
    images = _images(seed=4)
    for a, b in zip(_eval_outputs(model, images), _eval_outputs(loaded, images), strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_custom_arguments_must_be_passed_again(tmp_path: Path) -> None:
    """A module argument is not JSON: config.json lists it and from_pretrained refuses to load without it."""
    pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    model = _detector("faster_rcnn", box_roi_pool=pool)
    save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["custom_arguments"] == ["box_roi_pool"]
    assert "box_roi_pool" not in saved["torchvision_kwargs"]
    with pytest.raises(ValueError, match="box_roi_pool"):
        from_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, box_roi_pool=torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2))
    images = _images(seed=2)
    for a, b in zip(_eval_outputs(model, images), _eval_outputs(loaded, images), strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_corrupt_weights_and_foreign_directories(tmp_path: Path) -> None:
    """Damaged weights are a CheckpointError; a classifier's directory is not a detector."""
    save_pretrained(_detector("faster_rcnn"), tmp_path / "detector")
    weights = tmp_path / "detector" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(focalnet.CheckpointError, match="safetensors"):
        from_pretrained(tmp_path / "detector")

    classifier = focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**SMALL, num_labels=3))
    classifier.save_pretrained(tmp_path / "classifier")
    assert not is_detector_directory(tmp_path / "classifier")
    with pytest.raises(ValueError, match="not a focalnet detector config"):
        from_pretrained(tmp_path / "classifier")


def test_save_pretrained_needs_a_detector_built_here(tmp_path: Path) -> None:
    plain = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    with pytest.raises(ValueError, match="no detector_config"):
        save_pretrained(plain, tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# 8. argument errors
@pytest.mark.parametrize(
    ("architecture", "kwargs", "message"),
    [
        ("yolo", {"num_classes": 3}, "unknown detector 'yolo'"),
        ("faster_rcnn", {"num_classes": 1}, "including the background"),
        ("faster_rcnn", {}, "including the background"),
        ("faster_rcnn", {"num_classes": 3, "categories": CATEGORIES}, "num_classes=3 but 3 categories"),
        ("faster_rcnn", {"categories": [{"id": 2, "name": "a"}, {"id": 2, "name": "b"}]}, "distinct"),
        ("faster_rcnn", {"categories": [{"name": "a"}]}, "needs an 'id' and a 'name'"),
        ("retinanet", {"num_classes": 3, "aspect_ratios": [[1.0]] * 5}, "aspect_ratios needs anchor_sizes"),
        ("faster_rcnn", {"num_classes": 3, "anchor_sizes": [[32]] * 5, "aspect_ratios": [[1.0]] * 4}, "one entry"),
    ],
)
def test_bad_arguments_raise(architecture: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_detector(architecture, "focalnet-tiny", fpn_channels=32, backbone_overrides=SMALL, **kwargs)


def test_category_names_and_custom_anchors() -> None:
    """Names become ids 1..K; anchor_sizes/aspect_ratios build the RPN's generator, recorded in the config."""
    model = fasterrcnn_focalnet(
        "focalnet-tiny",
        categories=["cat", "dog"],
        fpn_channels=32,
        backbone_overrides=SMALL,
        anchor_sizes=[[16], [32], [64], [128], [256]],
        aspect_ratios=[[1.0, 2.0]] * 5,
        **SIZES,
    )
    config = model.detector_config
    assert config.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert config.label_names == {1: "cat", 2: "dog"}
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    generator = model.rpn.anchor_generator
    assert generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert generator.num_anchors_per_location() == [2] * 5
    assert config.anchor_sizes == [[16], [32], [64], [128], [256]]
    assert math.isclose(config.aspect_ratios[0][1], 2.0)


def _largest_gradient(backbone: focalnet.FocalNetBackbone) -> float:
    pixels = torch.randn(2, 3, 96, 160)
    pixels[0, :, :, 96:] = 0  # zero padding, as torchvision batches images of different sizes
    pixels[1, :, 64:] = 0
    sum(feature.square().mean() for feature in backbone(pixels).feature_maps).backward()
    return max(p.grad.abs().max().item() for p in backbone.parameters() if p.grad is not None)


def test_from_scratch_backbone_has_ordinary_gradients_on_zero_padding() -> None:
    """With HF's zero stem bias, padded positions reach every LayerNorm with zero variance and
    FocalNet-T's gradients blow up (training from scratch stalled); the dense backbone's random
    stem bias keeps them ordinary."""
    backbone = dense_backbone("focalnet-tiny", drop_path_rate=0.0).train()
    assert _largest_gradient(backbone) < 10
    backbone.zero_grad()
    with torch.no_grad():
        backbone.focalnet.embeddings.patch_embeddings.projection.bias.zero_()
    assert _largest_gradient(backbone) > 1e6  # what it guards against
