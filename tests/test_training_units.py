"""Unit tests of the training package: config resolution, optimiser groups and schedule, data
sources and the sharded sampler, evaluation metrics and the PNG plots."""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import focalnet
from conftest import randomize_, tiny_config
from focalnet.training.config import RECIPES, TrainConfig, load_config
from focalnet.training.data import (
    ImageDataset,
    ShardedSampler,
    collate,
    digits,
    image_folder,
    image_list,
    rand_augment_options,
    train_transform,
)
from focalnet.training.distributed import Processes
from focalnet.training.evaluation import Evaluation, evaluate, label_mapping
from focalnet.training.optim import layer_depth, parameter_groups, skips_weight_decay, warmup_cosine
from focalnet.training.plots import plot_confusion_matrix, plot_curves

DEMO_YAML = Path(__file__).parents[1] / "configs" / "demo-digits.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CPU = Processes(0, 1, torch.device("cpu"))

# Fields that configs/demo-digits.yaml sets on purpose to other values than the "demo" recipe.
# (None at present: the file spells the recipe out.)
DEMO_YAML_REFINEMENTS: set[str] = set()


def _write_png(path: Path, color: tuple[int, int, int] = (200, 40, 10), size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path


def _as_field_value(config: TrainConfig, name: str, value: object) -> object:
    """A recipe value as the config stores it (lists and tuples become tuples for tuple fields)."""
    return tuple(value) if isinstance(getattr(config, name), tuple) and value is not None else value


# ================================================================================================
# config.py
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_a_valid_config(name: str) -> None:
    config = load_config(recipe=name)
    assert isinstance(config, TrainConfig)
    config.validate()
    for key, value in RECIPES[name].items():
        assert getattr(config, key) == _as_field_value(config, key, value), key
    assert TrainConfig.from_dict(config.to_dict()) == config
    json.dumps(config.to_dict())  # plain data, as a checkpoint stores it


def test_default_recipe_is_finetune_and_unknown_recipe_is_refused() -> None:
    assert load_config() == load_config(recipe="finetune")
    with pytest.raises(ValueError, match="nonesuch"):
        load_config(recipe="nonesuch")


def test_resolution_order_recipe_then_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("recipe: demo\nepochs: 7\nlr: 0.01\nmean: [0.1, 0.2, 0.3]\nstd: [1, 1, 1]\n")
    config = load_config(path, overrides={"epochs": 3, "seed": 5}, recipe="imagenet")
    assert config.batch_size == RECIPES["imagenet"]["batch_size"]  # recipe (the argument beats the file's key)
    assert config.mixup == RECIPES["imagenet"]["mixup"]
    assert config.lr == 0.01  # file over recipe
    assert config.mean == (0.1, 0.2, 0.3) and isinstance(config.std, tuple)
    assert config.epochs == 3 and config.seed == 5  # overrides over file

    from_file_key = load_config(path)
    assert from_file_key.data == "digits" and from_file_key.epochs == 7  # the file's `recipe: demo`
    from_override_key = load_config(path, overrides={"recipe": "imagenet"})
    assert from_override_key.batch_size == RECIPES["imagenet"]["batch_size"]
    assert from_override_key.epochs == 7


@pytest.mark.parametrize("where", ["file", "overrides"])
def test_unknown_keys_are_named(tmp_path: Path, where: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 2\nbogus_key: 1\n" if where == "file" else "epochs: 2\n")
    overrides = {"lerning_rate": 0.1} if where == "overrides" else None
    bad = "bogus_key" if where == "file" else "lerning_rate"
    with pytest.raises(ValueError, match=bad):
        load_config(path, overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"amp": "int4"}, "amp"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"layer_decay": 0.0}, "layer_decay"),
        ({"mean": [0.5, 0.5]}, "mean and std"),
        ({"crop_pct": 0}, "crop_pct"),
        ({"batch_size": 0}, "batch_size"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_bad_values_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(overrides=overrides)
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def test_yaml_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\nlr: 0.1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs\n- 3\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert load_config(empty) == load_config()
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "field", "value"), [("lr: 1e-3\n", "lr", 1e-3), ("epochs: three\n", "epochs", None)])
def test_yaml_values_of_the_wrong_type(tmp_path: Path, text: str, field: str, value: float | None) -> None:
    """PyYAML reads `1e-3` (no dot) as a string; a config must load it as a number or name the field."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    try:
        config = load_config(path)
    except ValueError as error:
        assert field in str(error)
    else:
        assert value is not None and getattr(config, field) == pytest.approx(value)


def test_demo_yaml_matches_the_demo_recipe() -> None:
    from_file = load_config(DEMO_YAML)
    assert from_file == load_config(DEMO_YAML, recipe="demo")  # the file names its recipe
    recipe = load_config(recipe="demo")
    differing = {
        f.name for f in dataclasses.fields(TrainConfig) if getattr(from_file, f.name) != getattr(recipe, f.name)
    }
    assert differing == DEMO_YAML_REFINEMENTS, {n: (getattr(from_file, n), getattr(recipe, n)) for n in differing}


def test_configs_do_not_share_mutable_values_with_the_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing one loaded config must not change the recipe, nor later configs."""
    monkeypatch.setitem(RECIPES, "demo", copy.deepcopy(RECIPES["demo"]))  # whatever happens, restore it
    pristine = copy.deepcopy(RECIPES["demo"]["model_overrides"])
    first = load_config(recipe="demo")
    first.model_overrides["embed_dim"] = 8
    first.model_overrides["depths"].append(1)
    assert load_config(recipe="demo").model_overrides == pristine


# ================================================================================================
# optim.py
MODEL_CLASSES = [focalnet.FocalNetForMaskedImageModeling, focalnet.FocalNetForImageClassification]


def _optim_model(cls: type[nn.Module]) -> nn.Module:
    # encoder_stride=8 (from tiny_config): the MIM model requires it to equal patch_size * 2**(stages-1)
    return cls(tiny_config(depths=[1, 2], use_layerscale=True))


def _expected_split(model: nn.Module) -> tuple[set[str], set[str]]:
    """(no-decay names, decay names) from the module types, independently of the rule under test."""
    no_decay, decay = set(), set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            full = prefix + name
            if isinstance(module, nn.LayerNorm) or name in ("bias", "gamma_1", "gamma_2", "mask_token"):
                no_decay.add(full)
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and name == "weight" and param.ndim >= 2:
                decay.add(full)
    return no_decay, decay


@pytest.mark.parametrize("layer_decay", [None, 0.5])
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_parameter_groups_split_decay(cls: type[nn.Module], layer_decay: float | None) -> None:
    model = _optim_model(cls)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = _expected_split(model)
    assert no_decay | decay == set(names.values()), "a parameter the test does not classify"
    assert not no_decay & decay
    if cls is focalnet.FocalNetForMaskedImageModeling:
        assert "focalnet.embeddings.mask_token" in no_decay
    assert any(n.endswith("gamma_1") for n in no_decay) and any(n.endswith("gamma_2") for n in no_decay)

    groups = parameter_groups(model, weight_decay=0.05, layer_decay=layer_decay, base_lr=1e-3)
    seen = Counter(names[id(p)] for g in groups for p in g["params"])
    assert set(seen) == set(names.values()) and set(seen.values()) == {1}, "each parameter exactly once"
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            assert group["weight_decay"] == (0.0 if name in no_decay else 0.05), name
            assert skips_weight_decay(name, param) == (name in no_decay), name


def test_parameter_groups_skip_frozen_parameters() -> None:
    model = _optim_model(focalnet.FocalNetForImageClassification)
    model.focalnet.embeddings.requires_grad_(False)
    model.focalnet.encoder.stages[0].requires_grad_(False)
    for layer_decay in (None, 0.5):
        grouped = {id(p) for g in parameter_groups(model, 0.05, layer_decay, 1e-3) for p in g["params"]}
        assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
        assert grouped  # the rest still trains


def test_head_lr_scale_applies_outside_the_encoder() -> None:
    """Heads, pyramids and output norms train at head_lr_scale x lr; the FocalNet encoder at lr."""
    model = focalnet.UperNetForSemanticSegmentation.from_backbone(
        "focalnet-tiny", num_labels=3, backbone_overrides={"embed_dim": 8, "depths": [1, 1, 1, 1]}, hidden_size=8
    )
    groups = parameter_groups(model, 0.05, layer_decay=None, base_lr=1e-3, head_lr_scale=0.1)
    lr = {n: g["lr"] for n, p in model.named_parameters() for g in groups if any(p is q for q in g["params"])}
    assert {v for n, v in lr.items() if n.startswith("backbone.focalnet.")} == {1e-3}
    outside = {n: v for n, v in lr.items() if not n.startswith("backbone.focalnet.")}
    assert any(n.startswith("backbone.hidden_states_norms.") for n in outside)
    assert all(v == pytest.approx(1e-4) for v in outside.values()) and len(outside) > 10
    classifier = _optim_model(focalnet.FocalNetForImageClassification)
    groups = parameter_groups(classifier, 0.05, layer_decay=0.5, base_lr=1e-3, head_lr_scale=10.0)
    lr = {n: g["lr"] for n, p in classifier.named_parameters() for g in groups if any(p is q for q in g["params"])}
    assert lr["classifier.weight"] == pytest.approx(1e-2) and lr["focalnet.layernorm.weight"] == pytest.approx(1e-3)


def test_layer_decay_learning_rates() -> None:
    model = _optim_model(focalnet.FocalNetForImageClassification)
    base = 1e-3
    groups = parameter_groups(model, 0.05, layer_decay=0.5, base_lr=base)
    lr = {n: g["lr"] for n, p in model.named_parameters() for g in groups if any(p is q for q in g["params"])}
    stem = {v for n, v in lr.items() if n.startswith("focalnet.embeddings.")}
    head = {v for n, v in lr.items() if n.startswith(("classifier.", "focalnet.layernorm."))}
    assert len(stem) == 1 and stem.pop() == min(lr.values()) == pytest.approx(base * 0.5**4)
    assert head == {base}

    def block_lr(stage: int, layer: int) -> float:
        values = {v for n, v in lr.items() if n.startswith(f"focalnet.encoder.stages.{stage}.layers.{layer}.")}
        assert len(values) == 1
        return values.pop()

    blocks = [block_lr(0, 0), block_lr(1, 0), block_lr(1, 1)]
    assert blocks == sorted(blocks) and len(set(blocks)) == 3
    assert blocks == pytest.approx([base * 0.5**3, base * 0.5**2, base * 0.5])
    downsample = {v for n, v in lr.items() if ".stages.0.downsample." in n}
    assert downsample == {block_lr(0, 0)}  # goes with its stage's last block


@pytest.mark.parametrize(
    ("name", "depths", "expected"),
    [
        ("focalnet.encoder.stages.1.layers.0.mlp.fc1.weight", [1, 2], 2),
        ("focalnet.encoder.stages.0.downsample.projection.weight", [1, 2], 1),
        ("focalnet.encoder.stages.1.layers.1.gamma_2", [1, 2], 3),
        ("focalnet.embeddings.patch_embeddings.projection.weight", [1, 2], 0),
        ("focalnet.embeddings.mask_token", [1, 2], 0),
        ("focalnet.layernorm.weight", [1, 2], 4),
        ("classifier.weight", [1, 2], 4),
        ("decoder.0.weight", [1, 2], 4),
        ("encoder.stages.1.layers.0.norm1.weight", [1, 2], 2),  # FocalNetModel: no prefix
        ("embeddings.norm.bias", [1, 2], 0),
        ("focalnet.encoder.stages.2.layers.5.mlp.fc2.weight", [2, 2, 6, 2], 10),
        ("focalnet.encoder.stages.2.layers.10.mlp.fc2.weight", [2, 2, 18, 2], 15),
        ("focalnet.encoder.stages.1.downsample.norm.weight", [2, 2, 6, 2], 4),
        ("focalnet.encoder.stages.3.layers.1.norm2.bias", [2, 2, 6, 2], 12),
    ],
)
def test_layer_depth(name: str, depths: list[int], expected: int) -> None:
    assert layer_depth(name, depths) == expected


def test_warmup_cosine_schedule() -> None:
    base, warmup_lr, min_lr = 1e-3, 1e-6, 1e-5
    total, warmup = 100, 10
    factor = warmup_cosine(total, warmup, base, warmup_lr, min_lr)
    assert factor(0) == pytest.approx(warmup_lr / base)
    assert factor(warmup) == pytest.approx(1.0)
    assert factor(total) == pytest.approx(min_lr / base)
    assert factor(total + 50) == pytest.approx(min_lr / base)  # stays at the floor
    warm = [factor(s) for s in range(warmup + 1)]
    assert all(a < b for a, b in itertools.pairwise(warm))
    decay = [factor(s) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert factor(warmup + (total - warmup) // 2) == pytest.approx((min_lr + (base - min_lr) / 2) / base)
    assert warmup_cosine(total, 0, base, warmup_lr, min_lr)(0) == pytest.approx(1.0)


def test_schedule_scales_every_layer_decay_group() -> None:
    model = _optim_model(focalnet.FocalNetForImageClassification)
    groups = parameter_groups(model, 0.05, layer_decay=0.5, base_lr=1e-3)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    initial = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(20, 5, 1e-3, 1e-6, 1e-5))
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    for group, start in zip(optimizer.param_groups, initial, strict=True):
        assert group["lr"] == pytest.approx(start * 1e-5 / 1e-3)


# ================================================================================================
# data.py: the sampler
def _stream(size: int, batch: int, rank: int, world: int, epoch: int, seed: int = 3, start: int = 0) -> list:
    sampler = ShardedSampler(size, batch, rank, world, seed=seed)
    sampler.set_epoch(epoch, start)
    items = list(sampler)
    assert len(items) == len(sampler)
    return items


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_sampler_ranks_rebuild_the_single_process_stream(world: int) -> None:
    size, batch, epoch = 103, 8, 2
    single = _chunks(_stream(size, batch, 0, 1, epoch), batch)
    assert len(single) == size // batch and all(len(b) == batch for b in single)  # last partial batch dropped
    ids = [i for b in single for i, _ in b]
    assert len(ids) == len(set(ids)), "a sample twice in one epoch"
    ranks = [_chunks(_stream(size, batch, r, world, epoch), batch // world) for r in range(world)]
    for r in ranks:
        assert len(r) == len(single)
    for b, global_batch in enumerate(single):
        merged = [item for r in ranks for item in r[b]]
        assert len(merged) == batch
        assert set(merged) == set(global_batch), f"global batch {b}"


def test_sharded_sampler_resumes_and_reshuffles() -> None:
    size, batch = 50, 10
    full = _stream(size, batch, 0, 1, epoch=1)
    for k in range(size // batch + 1):
        assert _stream(size, batch, 0, 1, epoch=1, start=k) == full[k * batch :]
    rank1 = _stream(size, batch, 1, 2, epoch=1)
    assert _stream(size, batch, 1, 2, epoch=1, start=2) == rank1[2 * batch // 2 :]

    assert _stream(size, batch, 0, 1, epoch=1) == full  # same epoch, same order and seeds
    other_epoch = _stream(size, batch, 0, 1, epoch=2)
    assert [i for i, _ in other_epoch] != [i for i, _ in full]
    assert {s for _, s in other_epoch}.isdisjoint({s for _, s in full})
    assert [i for i, _ in _stream(size, batch, 0, 1, epoch=1, seed=4)] != [i for i, _ in full]


@pytest.mark.parametrize(("size", "world"), [(11, 3), (10, 2), (2, 4), (7, 1)])
def test_sharded_sampler_eval_covers_every_index_once(size: int, world: int) -> None:
    seen = []
    for rank in range(world):
        sampler = ShardedSampler(size, 3, rank, world, shuffle=False)
        items = list(sampler)
        assert len(items) == len(sampler)
        seen += [i for i, _ in items]
    assert sorted(seen) == list(range(size))


def test_sharded_sampler_rejects_bad_splits() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ShardedSampler(100, 6, rank=0, world=4)
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ShardedSampler(5, 8)


# ================================================================================================
# data.py: sources
def _images(tmp_path: Path) -> list[Path]:
    return [_write_png(tmp_path / "imgs" / f"{n}.png", (40 * n, 0, 0), size=8 + n) for n in range(4)]


def test_image_list_csv_class_names_without_header(tmp_path: Path) -> None:
    _images(tmp_path)
    listing = tmp_path / "train.csv"
    listing.write_text("imgs/0.png,dog\nimgs/1.png,cat\n# a comment\n\nimgs/2.png, dog\nimgs/3.png,bird\n")
    source = image_list(listing)
    assert source.classes == ["bird", "cat", "dog"]
    assert source.labels == [2, 1, 2, 0]
    assert [Path(n) for n in source.names] == [tmp_path / "imgs" / f"{n}.png" for n in range(4)]
    image = source.loaders[3]()
    assert image.mode == "RGB" and image.size == (11, 11)

    val = tmp_path / "val.csv"
    val.write_text("imgs/1.png,dog\n")
    assert image_list(val, classes=source.classes).labels == [2]  # the training class order
    val.write_text("imgs/1.png,horse\n")
    with pytest.raises(ValueError, match="horse"):
        image_list(val, classes=source.classes)


def test_image_list_csv_integer_labels_with_header(tmp_path: Path) -> None:
    paths = _images(tmp_path)
    listing = tmp_path / "lists" / "train.csv"
    listing.parent.mkdir()
    rows = ["../imgs/0.png,2", f"{paths[1]},0", "../imgs/2.png,2"]  # relative to the list, and absolute
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    source = image_list(listing)
    assert source.classes == ["0", "1", "2"]
    assert source.labels == [2, 0, 2]
    assert source.loaders[0]().size == (8, 8) and source.loaders[1]().size == (9, 9)


def test_image_list_json_forms(tmp_path: Path) -> None:
    _images(tmp_path)
    as_dicts = tmp_path / "dicts.json"
    as_dicts.write_text(json.dumps([{"path": "imgs/0.png", "label": 1}, {"path": "imgs/1.png", "label": 0}]))
    source = image_list(as_dicts)
    assert source.classes == ["0", "1"] and source.labels == [1, 0]
    as_pairs = tmp_path / "pairs.json"
    as_pairs.write_text(json.dumps([["imgs/2.png", "zebra"], ["imgs/3.png", "ant"]]))
    source = image_list(as_pairs)
    assert source.classes == ["ant", "zebra"] and source.labels == [1, 0]
    assert source.loaders[1]().size == (11, 11)


def test_image_list_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        image_list(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(ValueError, match="empty"):
        image_list(empty)


def test_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "train"
    _write_png(root / "dog" / "b.png")
    _write_png(root / "dog" / "a.PNG")
    _write_png(root / "cat" / "nested" / "c.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()
    source = image_folder(root)
    assert source.classes == ["cat", "dog", "empty_class"]
    assert source.labels == [0, 1, 1]
    assert [Path(n).name for n in source.names] == ["c.png", "a.PNG", "b.png"]
    assert source.loaders[1]().mode == "RGB"

    with pytest.raises(FileNotFoundError):
        image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    _write_png(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match="no class sub-directories"):
        image_folder(tmp_path / "flat")


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), torch.randint(0, 256, (64 * 64 * 3,), dtype=torch.uint8).numpy().tobytes()).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "data"
    _write_png(root / "a" / "good.png", size=20)
    bad = root / "b" / "bad.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00garbage, not a PNG" * 10 if damage == "garbage" else _truncated_png())
    _write_png(root / "b" / "fine.png", size=20)
    source = image_folder(root)
    dataset = ImageDataset(source, train_transform(load_config(recipe="demo")))
    bad_index = [Path(n).name for n in source.names].index("bad.png")
    with pytest.warns(UserWarning, match="bad.png"):
        assert dataset[(bad_index, 0)] is None
    with pytest.warns(UserWarning):
        samples = [dataset[(i, 7)] for i in range(len(dataset))]
    images, labels, skipped = collate(samples)
    assert skipped == 1
    assert images.shape == (2, 3, 16, 16)
    assert labels.tolist() == [0, 1]

    images, labels, skipped = collate([None, None])
    assert skipped == 2 and len(images) == 0 and len(labels) == 0 and labels.dtype == torch.long


@pytest.mark.parametrize("recipe", ["demo", "finetune"])
def test_augmentation_depends_only_on_index_and_seed(recipe: str) -> None:
    # finetune adds RandAugment, flips and random erasing
    config = load_config(recipe=recipe, overrides={"image_size": 16})
    dataset = ImageDataset(digits("train"), train_transform(config))
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    first, label = dataset[(5, 2**40 + 17)]
    assert torch.equal(torch.get_rng_state(), global_state), "sampling disturbed the global RNG"
    torch.rand(10)  # moving the global RNG changes nothing
    second, again = dataset[(5, 2**40 + 17)]
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, second) and label == again
    others = [dataset[(5, seed)][0] for seed in (1, 2, 3)]
    assert not any(torch.equal(first, other) for other in others)


def test_digits_split() -> None:
    train, val = digits("train"), digits("val")
    assert len(train) + len(val) == 1797
    assert set(train.names).isdisjoint(val.names)
    assert train.classes == val.classes == [str(d) for d in range(10)]
    train_counts, val_counts = Counter(train.labels), Counter(val.labels)
    for label in range(10):
        total = train_counts[label] + val_counts[label]
        assert abs(val_counts[label] - 0.2 * total) <= 1, label
    image = val.loaders[0]()
    assert image.mode == "RGB" and image.size == (8, 8)
    assert digits("val").names == val.names  # fixed by split_seed
    assert digits("val", split_seed=1).names != val.names


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rand-m9-mstd0.5-inc1", {"magnitude": 9, "num_ops": 2}),
        ("rand-m7-n3", {"magnitude": 7, "num_ops": 3}),
        ("rand-n1-mstd0.5", {"magnitude": 9, "num_ops": 1}),
        ("rand", {"magnitude": 9, "num_ops": 2}),
    ],
)
def test_rand_augment_options(spec: str, expected: dict[str, int]) -> None:
    assert rand_augment_options(spec) == expected


@pytest.mark.parametrize("spec", ["augmix-m5", "m9-n2", ""])
def test_rand_augment_options_rejects_other_strings(spec: str) -> None:
    with pytest.raises(ValueError, match="rand_augment"):
        rand_augment_options(spec)


# ================================================================================================
# evaluation.py
def _batches(model: nn.Module, num_classes: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Three batches (one holding no readable image) whose labels are right about half the time."""
    generator = torch.Generator().manual_seed(1)
    batches, all_logits, all_labels = [], [], []
    for size in (5, 3, 0, 4):
        images = torch.randn(size, 3, 32, 32, generator=generator)
        if size == 0:
            batches.append((torch.empty(0), torch.empty(0, dtype=torch.long), 2))
            continue
        with torch.no_grad():
            logits = model.eval()(images).logits
        labels = torch.randint(0, num_classes, (size,), generator=generator)
        labels[::2] = logits.argmax(-1)[::2]
        batches.append((images, labels, 1))
        all_logits.append(logits)
        all_labels.append(labels)
    return batches, torch.cat(all_logits), torch.cat(all_labels)


@pytest.mark.parametrize("num_classes", [7, 3])
def test_evaluate_matches_a_direct_computation(num_classes: int) -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(tiny_config(num_labels=num_classes)), scale=0.5)
    batches, logits, labels = _batches(model, num_classes)
    model.train()
    result = evaluate(model, batches, num_classes, CPU)
    assert model.training, "evaluate must restore the training mode"
    count = len(labels)
    assert result.count == count and result.skipped == 2 + 1 + 1 + 1
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    top1 = logits.argmax(-1)
    assert result.acc1 == pytest.approx(100 * (top1 == labels).float().mean().item())
    top5 = logits.topk(min(5, num_classes), -1).indices
    assert result.acc5 == pytest.approx(100 * (top5 == labels[:, None]).any(-1).float().mean().item())
    assert 0 < result.acc1 < 100 or num_classes == 3
    if num_classes <= 5:
        assert result.acc5 == 100.0
    expected = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for t, p in zip(labels.tolist(), top1.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(result.confusion, expected)
    assert int(result.confusion.sum()) == result.count
    for c, accuracy in enumerate(result.per_class_accuracy):
        members = labels == c
        assert accuracy == (None if not members.any() else pytest.approx((top1[members] == c).float().mean().item()))


def test_evaluate_applies_the_label_map_and_handles_no_images() -> None:
    model = focalnet.FocalNetForImageClassification(tiny_config(num_labels=3))
    batches, _, _ = _batches(model, 3)
    reverse = torch.tensor([2, 1, 0])
    remapped = [(images, reverse[y] if len(y) else y, skipped) for images, y, skipped in batches]
    direct = evaluate(model, batches, 3, CPU)
    mapped = evaluate(model, remapped, 3, CPU, label_map=lambda y: reverse[y])
    assert torch.equal(mapped.confusion, direct.confusion) and mapped.acc1 == direct.acc1
    assert mapped.loss == pytest.approx(direct.loss)

    empty = evaluate(model, [], 3, CPU)
    assert empty.count == 0 and empty.acc1 == 0.0 and int(empty.confusion.sum()) == 0
    assert empty.per_class_accuracy == [None, None, None]


def test_label_mapping() -> None:
    labels = torch.tensor([0, 1, 1, 0])
    by_name = label_mapping(["b", "a"], {0: "a", 1: "b", 2: "c"})
    assert by_name(labels).tolist() == [1, 0, 0, 1]
    by_position = label_mapping(["x", "y", "z"], {0: "a", 1: "b", 2: "c"})
    assert by_position(labels).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="do not map onto"):
        label_mapping(["x", "y"], {0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="1 names are shared"):  # partly shared names: ambiguous
        label_mapping(["cat", "dog", "fox"], {0: "dog", 1: "wolf", 2: "bear"})


def test_evaluation_summary() -> None:
    result = Evaluation(1.5, 50.0, 75.0, 4, 1, torch.tensor([[2, 0], [2, 0]]))
    assert result.summary() == {"loss": 1.5, "acc1": 50.0, "acc5": 75.0, "images": 4, "skipped": 1}
    assert result.per_class_accuracy == [1.0, 0.0]


# ================================================================================================
# plots.py
def _assert_only_png(directory: Path, name: str) -> None:
    assert sorted(os.listdir(directory)) == [name], "temporary files left behind"
    assert (directory / name).read_bytes()[:8] == PNG_SIGNATURE


def test_plot_curves(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e, "val_acc1": 30 * e, "val_acc5": 30 + 20 * e}
        for e in (1, 2, 3)
    ]
    out = tmp_path / "run"
    plot_curves(history, out / "curves.png")  # makes the directory
    _assert_only_png(out, "curves.png")
    first = (out / "curves.png").read_bytes()
    plot_curves(history[:1], out / "curves.png")  # replaces the file
    _assert_only_png(out, "curves.png")
    assert (out / "curves.png").read_bytes() != first


@pytest.mark.parametrize("num_classes", [3, 60])
def test_plot_confusion_matrix(tmp_path: Path, num_classes: int) -> None:
    confusion = torch.randint(0, 5, (num_classes, num_classes))
    confusion[0] = 0  # a class without images
    plot_confusion_matrix(confusion, [f"class {i}" for i in range(num_classes)], tmp_path / "cm.png")
    _assert_only_png(tmp_path, "cm.png")
    with Image.open(tmp_path / "cm.png") as image:
        image.verify()


def test_failed_plot_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_acc1": 50.0, "val_acc5": 90.0}]
    plot_curves(history, tmp_path / "curves.png")
    before = (tmp_path / "curves.png").read_bytes()

    def broken_savefig(self: Figure, path: str | Path, **kwargs: object) -> None:
        Path(path).write_bytes(PNG_SIGNATURE + b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_curves(history * 2, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == before
    _assert_only_png(tmp_path, "curves.png")


def test_image_list_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; the header must still be recognised."""
    _write_png(tmp_path / "a.png")
    _write_png(tmp_path / "b.png")
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,1\nb.png,0\n", encoding="utf-8-sig")
    source = image_list(listing)
    assert source.classes == ["0", "1"] and source.labels == [1, 0]


def test_training_images_are_read_as_prediction_reads_them(tmp_path: Path) -> None:
    """EXIF orientation and transparency are applied as in `focalnet predict` (shared `load_image`)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 4), (10, 20, 30)).save(tmp_path / "a" / "turned.jpg", exif=exif)
    Image.new("RGBA", (5, 5), (0, 0, 0, 0)).save(tmp_path / "a" / "clear.png")
    source = image_folder(tmp_path)
    turned = source.loaders[source.names.index(str(tmp_path / "a" / "turned.jpg"))]()
    clear = source.loaders[source.names.index(str(tmp_path / "a" / "clear.png"))]()
    assert turned.size == (4, 8)
    assert clear.getpixel((2, 2)) == (255, 255, 255)  # transparent on white, not black
