"""`focalnet train --task semantic-segmentation`, `evaluate` and `predict` on the synthetic shapes in
ADE20K layout: learning, exact resume after a kill, whole-set mIoU under 1 and 2 processes, the
recipe and its poly schedule, and runs that survive bad samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import metrics_rows, set_args
from focalnet.cli import main
from focalnet.detection.synthetic import make_shapes_dataset
from focalnet.segmentation import UperNetForSemanticSegmentation
from focalnet.training import load_config, train
from focalnet.training.config import RECIPES
from focalnet.training.optim import warmup_poly
from test_training_runs import final_weights, finish, max_difference, run_cli, torchrun, wait_and_kill

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY_UPERNET = {
    "task": "semantic-segmentation",
    "model_overrides": {"embed_dim": 32, "depths": [1, 1, 2, 1]},
    "drop_path_rate": 0.0,
    "head_overrides": {"hidden_size": 64, "auxiliary_channels": 32},
    "image_size": 128,
    "base_size": [256, 192],
    "batch_size": 8,
    "lr": 1e-4,
    "lr_scale_batch": None,
    "warmup_epochs": 0.5,
    "eval_batch_size": 8,
}


def settings(data: Path, output_dir: Path, **overrides) -> dict:
    return {"data": str(data), "output_dir": str(output_dir), **TINY_UPERNET, **overrides}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, 160, 24, seed=0, layout="ade20k")


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory) -> Path:
    """An UperNet trained from scratch on the shapes, in this process."""
    output_dir = tmp_path_factory.mktemp("upernet")
    train(load_config(recipe="segmentation", overrides=settings(shapes, output_dir, epochs=5)))
    return output_dir


# ------------------------------------------------------------------------------------------------
def test_upernet_learns_the_shapes(trained: Path) -> None:
    history = metrics_rows(trained)
    first, last = history[0], history[-1]
    assert {
        "train_loss",
        "val_loss",
        "val_miou",
        "val_pixel_accuracy",
        "val_mean_accuracy",
        "lr",
        "images_per_sec",
    } <= (last.keys())
    assert last["val_miou"] >= first["val_miou"] + 0.15, [row["val_miou"] for row in history]
    assert last["val_loss"] < first["val_loss"]
    assert (trained / "curves.png").is_file() and (trained / "model" / "preprocessor_config.json").is_file()


def test_evaluate_equals_the_last_validation_and_lists_classes(trained: Path, shapes: Path, tmp_path, capsys) -> None:
    assert (
        main(["evaluate", "--model", str(trained / "model"), "--data", str(shapes), "--output-dir", str(tmp_path)]) == 0
    )
    report = json.loads((tmp_path / "evaluation.json").read_text())
    last = metrics_rows(trained)[-1]
    for name in ("miou", "pixel_accuracy", "mean_accuracy", "loss"):
        assert report[name] == pytest.approx(last[f"val_{name}"], abs=1e-9), name
    assert list(report["per_class_iou"]) == ["background", "circle", "square", "triangle"]
    ious = [value for value in report["per_class_iou"].values() if value is not None]
    assert report["miou"] == pytest.approx(sum(ious) / len(ious))
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "triangle" in printed and "IoU %" in printed


def test_predict_writes_label_maps_and_overlays(trained: Path, shapes: Path, tmp_path: Path) -> None:
    images = sorted((shapes / "images" / "validation").iterdir())[:2]
    output = tmp_path / "whole"
    assert main(["predict", *map(str, images), "--model", str(trained / "model"), "--output-dir", str(output)]) == 0
    for image in images:
        labels = np.array(Image.open(output / f"{image.stem}_labels.png"))
        assert labels.shape == Image.open(image).size[::-1] and labels.max() <= 3
        assert Image.open(output / f"{image.stem}_overlay.png").width > labels.shape[1]  # the legend beside it
    windowed = tmp_path / "window"
    command = ["predict", str(images[0]), "--model", str(trained / "model"), "--output-dir", str(windowed)]
    assert main([*command, "--window", "48"]) == 0
    tiled = np.array(Image.open(windowed / f"{images[0].stem}_labels.png"))
    whole = np.array(Image.open(output / f"{images[0].stem}_labels.png"))
    assert tiled.shape == whole.shape and (tiled == whole).mean() > 0.5


@pytest.mark.numerics
def test_kill_and_resume_equals_the_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    common = {"deterministic": True, "checkpoint_every": 2, "epochs": 2, "max_train_batches": 4, "batch_size": 4}
    full = run_cli(set_args(settings(shapes, tmp_path / "full", **common), "segmentation"))
    killed_dir = tmp_path / "killed"
    wait_and_kill(run_cli(set_args(settings(shapes, killed_dir, **common), "segmentation")), killed_dir)
    finish(run_cli(["--resume", "--output-dir", str(killed_dir)]), timeout=300)
    finish(full, timeout=300)
    # exact: the resumed run repeats the same arithmetic (see test_training_runs.py)
    assert max_difference(final_weights(tmp_path / "full"), final_weights(killed_dir)) == 0
    full_rows, resumed_rows = metrics_rows(tmp_path / "full"), metrics_rows(killed_dir)
    assert full_rows[-1]["train_loss"] == resumed_rows[-1]["train_loss"]
    assert full_rows[-1]["val_miou"] == resumed_rows[-1]["val_miou"]


VALIDATE = """
import json, sys
from focalnet.training import load_config
from focalnet.training import distributed
from focalnet.training.trainer import Trainer
config = load_config(recipe="segmentation", overrides=json.loads(sys.argv[1]))
processes = distributed.start("cpu")
metrics = Trainer(config, processes).validate()
if processes.is_main:
    print(json.dumps(metrics))
distributed.stop()
"""


@pytest.mark.numerics
def test_validation_is_the_same_with_one_and_two_processes(trained: Path, shapes: Path, tmp_path: Path) -> None:
    """Each process predicts its share of the images; the sums are reduced, so mIoU is the whole set's.
    One image per batch: each prediction is then the same computation in both runs (see
    test_training_runs.py), and the per-class counts behind mIoU are exact integer sums."""
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    values = json.dumps(settings(shapes, tmp_path / "unused", init_from=str(trained / "model"), eval_batch_size=1))
    launchers = {
        "one": [sys.executable, str(script), values],
        "two": [*torchrun(tmp_path / "logs", str(script)), values],
    }
    results = {}
    for name, command in launchers.items():
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("val_miou", "val_pixel_accuracy", "val_mean_accuracy"):
        assert results["one"][key] == results["two"][key], key
    assert results["one"]["val_loss"] == pytest.approx(results["two"]["val_loss"], rel=1e-12, abs=0)
    assert results["one"]["val_miou"] > 0.3  # a trained model: the comparison is not of zeros


# ------------------------------------------------------------------------------------------------
def test_missing_and_mismatched_label_maps_are_skipped_and_counted(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    labels = data / "annotations" / "training"
    first, second = sorted(labels.iterdir())[:2]
    first.unlink()
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(second)
    with pytest.warns(UserWarning) as caught:
        history = train(load_config(recipe="segmentation", overrides=settings(data, tmp_path / "run", epochs=1)))
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 of 160 images" in messages and "is 12x10" in messages
    assert history[0]["skipped_images"] == 2


def test_a_label_outside_the_classes_stops_the_run_naming_file_and_value(shapes: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    bad = sorted((data / "annotations" / "training").iterdir())[0]
    values = np.array(Image.open(bad))
    values[0, 0] = 9
    Image.fromarray(values).save(bad)
    assert main(["train", *set_args(settings(data, tmp_path / "run", epochs=1), "segmentation")]) == 2
    error = capsys.readouterr().err
    assert bad.name in error and "label 9, outside 0..3" in error


def test_a_micro_batch_of_one_image_is_refused(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs >= 2"):
        train(
            load_config(
                recipe="segmentation", overrides=settings(shapes, tmp_path / "run", batch_size=2, accum_steps=2)
            )
        )


def test_recipe_is_the_papers_upernet_schedule() -> None:
    recipe = load_config(recipe="segmentation", overrides={"data": "x"})
    assert recipe.task == "semantic-segmentation" and recipe.schedule == "poly"
    assert (recipe.lr, recipe.lr_scale_batch, recipe.weight_decay, recipe.image_size) == (6e-5, 16, 0.01, 512)
    assert list(recipe.base_size) == [2048, 512] and list(recipe.scale_range) == [0.5, 2.0]
    assert load_config(overrides={"task": "semantic-segmentation"}).lr == RECIPES["segmentation"]["lr"]
    factor = warmup_poly(total_steps=100, warmup_steps=10, base_lr=1.0, warmup_lr=1e-6, min_lr=0.0, power=1.0)
    assert factor(0) == pytest.approx(1e-6)
    assert factor(5) == pytest.approx(0.95 * (1e-6 + (1 - 1e-6) * 0.5))
    assert factor(10) == pytest.approx(0.9) and factor(55) == pytest.approx(0.45) and factor(100) == 0.0


def test_init_from_a_classifier_gives_the_backbone(tmp_path: Path, shapes: Path) -> None:
    from focalnet import FocalNetConfig, FocalNetForImageClassification
    from focalnet.training.distributed import Processes
    from focalnet.training.segmentation import SemanticSegmentationTask

    classifier = FocalNetForImageClassification(FocalNetConfig(embed_dim=16, depths=[1, 1, 1, 1], num_labels=3))
    classifier.save_pretrained(tmp_path / "classifier")
    config = load_config(
        recipe="segmentation",
        overrides=settings(shapes, tmp_path / "run", init_from=str(tmp_path / "classifier"), model_overrides={}),
    )
    model = SemanticSegmentationTask(config, Processes(0, 1, torch.device("cpu"))).build_model()
    assert isinstance(model, UperNetForSemanticSegmentation) and model.config.num_labels == 4
    assert model.config.id2label[3] == "triangle"
    stem = "focalnet.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.backbone.state_dict()[stem], classifier.state_dict()[stem])


def test_bf16_accumulation_and_ema_run(shapes: Path, tmp_path: Path) -> None:
    values = settings(shapes, tmp_path / "amp", epochs=1, accum_steps=2, max_train_batches=2, amp="bf16", ema_decay=0.9)
    row = train(load_config(recipe="segmentation", overrides=values))[0]
    assert row["step"] == 2 and all(np.isfinite(row[key]) for key in ("train_loss", "val_loss", "val_miou"))
    saved = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "amp" / "model")  # the EMA weights
    assert saved.config.id2label[1] == "circle"
