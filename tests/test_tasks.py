"""The training engine is task-agnostic: a task of one's own (not a FocalNet model, list inputs,
dict targets, several loss terms) plugs in and gets metrics, curves, checkpoints and exact resume;
task selection, the simmim recipe and batch-scaled learning rates."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from focalnet._io import atomic_path
from focalnet.cli import build_parser
from focalnet.training import Task, Trainer, load_config, train
from focalnet.training.distributed import Processes
from focalnet.training.task import task_named

CONFIGS = Path(__file__).parents[1] / "configs"


class NoisyImages(Dataset):
    """Images of random sizes (from the sample's seed) whose target is their mean brightness;
    sample 3 is "unreadable"."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        if index == 3:
            return None
        generator = torch.Generator().manual_seed(index * 7919 + seed % 1000)
        height, width = (int(v) for v in torch.randint(6, 14, (2,), generator=generator))
        level = (index % 5) / 5
        image = level + 0.1 * torch.rand(3, height, width, generator=generator)
        return image, {"mean": image.mean()}


class Brightness(nn.Module):
    """Not a FocalNet: pools each image of a list to three numbers and regresses its brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.stack([image.mean(dim=(1, 2)) for image in images])).squeeze(-1)


class BrightnessTask(Task):
    name = "brightness"
    stop_after_epoch: int | None = None

    def train_dataset(self) -> Dataset:
        return NoisyImages(40)

    def val_dataset(self) -> Dataset:
        return NoisyImages(10)

    def collate(self, samples):
        good = [s for s in samples if s is not None]
        return [image for image, _ in good], [target for _, target in good], len(samples) - len(good)

    def placeholder_batch(self):
        return [torch.zeros(3, 8, 8)], [{"mean": torch.tensor(0.0)}]

    def build_model(self) -> nn.Module:
        return Brightness()

    def training_loss(self, network, inputs, targets):
        predictions = network(inputs)
        truth = torch.stack([target["mean"] for target in targets])
        squared = (predictions - truth).pow(2).mean()
        absolute = (predictions - truth).abs().mean()
        return squared + 0.1 * absolute, {"loss_squared": squared.detach(), "loss_absolute": absolute.detach()}

    @torch.no_grad()
    def evaluate(self, model, batches):
        error = count = skipped = 0.0
        for images, targets, dropped in batches:
            skipped += dropped
            if images:
                truth = torch.stack([target["mean"] for target in targets])
                error += (model(images) - truth).abs().sum().item()
                count += len(images)
        error, count, skipped = self.processes.sum([error, count, skipped])
        return {"val_mae": error / max(count, 1), "skipped": skipped}

    def after_epoch(self, model, epoch, output_dir) -> None:
        if epoch == self.stop_after_epoch:
            raise KeyboardInterrupt("simulated crash after the epoch's checkpoint")

    def save_model(self, model, directory: Path) -> None:
        with atomic_path(directory / "brightness.pt") as tmp:
            torch.save(model.state_dict(), tmp)


def brightness_config(output_dir: Path, **overrides):
    settings = {"data": "unused", "epochs": 4, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0, "weight_decay": 0}
    settings["layer_decay"] = None  # (the finetune recipe decays by FocalNet blocks)
    return load_config(overrides={**settings, "output_dir": str(output_dir), **overrides})


def test_a_task_of_ones_own_gets_the_whole_engine(tmp_path: Path) -> None:
    rows = train(brightness_config(tmp_path / "run"), task_class=BrightnessTask)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    first, last = rows[0], rows[-1]
    assert first.keys() >= {"train_loss", "loss_squared", "loss_absolute", "val_mae", "lr", "images_per_sec"}
    assert first["train_loss"] == pytest.approx(first["loss_squared"] + 0.1 * first["loss_absolute"], rel=1e-5)
    assert last["val_mae"] < first["val_mae"]
    assert first["skipped_images"] == 2  # sample 3 once in training and once in validation
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["val_mae"] == pytest.approx(last["val_mae"])
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "model" / "brightness.pt").is_file()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert checkpoint["task"] == "brightness"


@pytest.mark.numerics
def test_a_task_of_ones_own_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = brightness_config(tmp_path / "reference", drop_path_rate=0.0)
    train(config, task_class=BrightnessTask)
    monkeypatch.setattr(BrightnessTask, "stop_after_epoch", 2)
    crashed = brightness_config(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        train(crashed, task_class=BrightnessTask)
    assert not (tmp_path / "crashed" / "model").exists()
    monkeypatch.setattr(BrightnessTask, "stop_after_epoch", None)
    rows = train(crashed, resume=True, task_class=BrightnessTask)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    reference = torch.load(tmp_path / "reference" / "model" / "brightness.pt", weights_only=True)
    resumed = torch.load(tmp_path / "crashed" / "model" / "brightness.pt", weights_only=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)

    # another task cannot continue that run
    with pytest.raises(ValueError, match="is a brightness run"):
        train(load_config(recipe="demo", overrides={"output_dir": str(tmp_path / "crashed")}), resume=True)


def test_layer_decay_needs_a_focalnet_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layer_decay needs a FocalNet model"):
        Trainer(brightness_config(tmp_path, layer_decay=0.8), Processes(0, 1, torch.device("cpu")), BrightnessTask)


# ------------------------------------------------------------------------------------------------
# selecting tasks and their recipes
def test_the_task_picks_its_default_recipe() -> None:
    config = load_config(overrides={"task": "masked-image-modeling"})
    assert config.task == "masked-image-modeling"
    assert (config.image_size, config.mask_patch_size, config.mask_ratio) == (192, 32, 0.6)
    assert (config.lr, config.lr_scale_batch, config.warmup_epochs, config.drop_path_rate) == (2e-4, 512, 10, 0.0)
    assert config.crop_scale == (0.67, 1.0) and config.rand_augment is None and config.mixup == 0
    assert load_config().task == "classification" and load_config().layer_decay == 0.8  # finetune
    assert task_named("masked-image-modeling").name == "masked-image-modeling"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "detection-someday"}, "task must be one of"),
        ({"task": "masked-image-modeling", "mask_ratio": 1.0}, "mask_ratio must be in"),
        ({"task": "masked-image-modeling", "mask_patch_size": 0}, "mask_patch_size must be >= 1"),
    ],
)
def test_bad_task_settings(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(overrides=overrides)


def test_pretrain_is_train_with_the_masked_image_modeling_task() -> None:
    parser = build_parser()
    assert parser.parse_args(["pretrain", "--data", "x", "--mask-ratio", "0.5"]).task == "masked-image-modeling"
    assert parser.parse_args(["pretrain", "--data", "x"]).mask_ratio is None
    assert parser.parse_args(["train", "--data", "x"]).task is None
    assert parser.parse_args(["train", "--task", "masked-image-modeling"]).task == "masked-image-modeling"


def test_example_pretraining_config_loads() -> None:
    config = load_config(CONFIGS / "pretrain-digits.yaml")
    assert config.task == "masked-image-modeling" and config.lr_scale_batch is None
    assert config.image_size % config.mask_patch_size == 0


def test_lr_scale_batch_scales_every_rate() -> None:
    """SimMIM scales lr, warm-up lr and minimum lr by batch / 512 (and the paper's recipe by / 1024)."""
    pytest.importorskip("sklearn")
    overrides = {
        "task": "masked-image-modeling",
        "data": "digits",
        "model_overrides": {
            "embed_dim": 8,
            "depths": [1, 1],
            "focal_levels": [2, 2],
            "focal_windows": [3, 3],
            "patch_size": 2,
        },
        "image_size": 16,
        "mask_patch_size": 4,
        "batch_size": 64,
        "epochs": 2,
        "warmup_epochs": 1,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(load_config(overrides=overrides), Processes(0, 1, torch.device("cpu")))
    scale = 64 / 512
    base = trainer.optimizer.param_groups[0]["initial_lr"]
    assert base == pytest.approx(2e-4 * scale)
    factor = trainer.scheduler.lr_lambdas[0]
    total = 2 * trainer.steps_per_epoch
    assert base * factor(0) == pytest.approx(1e-6 * scale)
    assert base * factor(total) == pytest.approx(1e-5 * scale)
