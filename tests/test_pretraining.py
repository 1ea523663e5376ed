"""`focalnet pretrain` (SimMIM on the training engine) end to end, on crops of the bundled photos:
learning, reconstruction figures, the transformers oracle, kill-and-resume, torchrun, and
fine-tuning a classifier from the pretrained encoder."""

from __future__ import annotations

import itertools
import json
import math
import random
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from focalnet import FocalNetForImageClassification, FocalNetForMaskedImageModeling, MaskGenerator
from focalnet.training import Trainer, load_config, train
from focalnet.training.distributed import Processes
from focalnet.visualization import HEADER, MARGIN, MIN_PANEL_HEIGHT
from test_training_runs import final_weights, finish, max_difference, run_cli, torchrun, wait_and_kill

PHOTOS = Path(__file__).parent / "data" / "images"
CLASSES = ("astronaut", "chelsea", "rocket")
SIZE = 32
TINY_MODEL = {"embed_dim": 16, "depths": [1, 1], "focal_levels": [2, 2], "focal_windows": [3, 3], "patch_size": 2}


def photo_crops(root: Path, train_per_photo: int = 24, val_per_photo: int = 6, seed: int = 0) -> Path:
    """root/{train,val}/<photo>/*.png: random square crops (an eighth to a quarter of the short side) of
    the bundled photographs, resized to 40 px (the runs crop 32 px out of them)."""
    rng = random.Random(seed)
    for name in CLASSES:
        with Image.open(PHOTOS / f"{name}.jpg") as photo:
            photo = photo.convert("RGB")
            short = min(photo.size)
            for split, count in (("train", train_per_photo), ("val", val_per_photo)):
                directory = root / split / name
                directory.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    side = rng.randint(short // 8, short // 4)
                    left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
                    crop = photo.crop((left, top, left + side, top + side)).resize((40, 40), Image.BICUBIC)
                    crop.save(directory / f"{name}-{split}-{k:02d}.png")
    return root


def pretrain_settings(data: Path, output_dir: Path, **overrides) -> dict:
    """A few-second SimMIM run: a 2-stage 16-wide FocalNet, 32 px crops, 4 px mask cells."""
    return {
        "task": "masked-image-modeling",
        "data": str(data),
        "model_overrides": TINY_MODEL,
        "image_size": SIZE,
        "mask_patch_size": 4,
        "epochs": 6,
        "batch_size": 4,
        "lr": 5e-3,
        "lr_scale_batch": None,
        "warmup_epochs": 0.5,
        "reconstruction_images": 3,
        "output_dir": str(output_dir),
        **overrides,
    }


def cli_args(settings: dict) -> list[str]:
    return [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_crops(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def pretrained(photos: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    output_dir = tmp_path_factory.mktemp("pretrain")
    rows = train(load_config(overrides=pretrain_settings(photos, output_dir)))
    return output_dir, rows


def test_pretraining_learns_and_writes_its_outputs(pretrained: tuple[Path, list[dict]]) -> None:
    output_dir, rows = pretrained
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) >= {"epoch", "train_loss", "val_loss", "lr", "images_per_sec", "skipped_images"}
    assert not any(key.startswith("val_acc") for key in rows[0])
    assert rows[-1]["val_loss"] <= 0.8 * rows[0]["val_loss"], [row["val_loss"] for row in rows]
    assert json.loads((output_dir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 6
    assert (output_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # reconstructions/epoch-NNN.png: three validation images x four panels
    scale = math.ceil(MIN_PANEL_HEIGHT / SIZE)
    panel = SIZE * scale
    for epoch in range(1, 7):
        with Image.open(output_dir / "reconstructions" / f"epoch-{epoch:03d}.png") as figure:
            assert figure.size == (4 * panel + 5 * MARGIN, HEADER + 3 * panel + 4 * MARGIN)
    # the first panel of each row is the de-normalised validation image, the same every epoch
    first, last = (Image.open(output_dir / "reconstructions" / f"epoch-{e:03d}.png").convert("RGB") for e in (1, 6))
    box = (MARGIN, HEADER + MARGIN, MARGIN + panel, HEADER + MARGIN + panel)
    assert first.crop(box).tobytes() == last.crop(box).tobytes()
    # the masked panels: validation masks are the same every epoch and differ between images
    hidden = []
    for row in range(3):
        top, left = HEADER + MARGIN + row * (panel + MARGIN), 2 * MARGIN + panel
        crops = [image.crop((left, top, left + panel, top + panel)) for image in (first, last)]
        assert crops[0].tobytes() == crops[1].tobytes()
        grey = torch.tensor(list(crops[0].getdata())).eq(128).all(dim=1)
        assert 0.5 < grey.float().mean() < 0.75  # ~62% of the 8x8 cells (40 of 64) hidden
        hidden.append(grey)
    assert not torch.equal(hidden[0], hidden[1]) and not torch.equal(hidden[1], hidden[2])
    third = (MARGIN + 2 * (panel + MARGIN), HEADER + MARGIN)
    assert (
        first.crop((*third, third[0] + panel, third[1] + panel)).tobytes()
        != last.crop((*third, third[0] + panel, third[1] + panel)).tobytes()
    ), "the reconstruction panel should change as the model learns"


def test_saved_model_runs_in_transformers_and_matches(pretrained: tuple[Path, list[dict]]) -> None:
    from transformers import FocalNetForMaskedImageModeling as HFMaskedImageModeling

    model_dir = pretrained[0] / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["image_size"] == SIZE and config["architectures"] == ["FocalNetForMaskedImageModeling"]
    assert config["encoder_stride"] == 4 and config["mask_patch_size"] == 4
    assert (model_dir / "preprocessor_config.json").is_file()
    ours = FocalNetForMaskedImageModeling.from_pretrained(model_dir)
    theirs = HFMaskedImageModeling.from_pretrained(model_dir).eval()
    pixels = torch.randn(2, 3, SIZE, SIZE)
    generator = torch.Generator().manual_seed(0)
    masks = MaskGenerator(SIZE, 4, 2)
    mask = torch.stack([masks(generator), masks(generator)]).flatten(1)
    with torch.no_grad():
        mine, reference = ours(pixels, bool_masked_pos=mask), theirs(pixels, bool_masked_pos=mask)
    torch.testing.assert_close(mine.reconstruction, reference.reconstruction, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, reference.loss, atol=1e-5, rtol=0)


def test_finetuning_from_the_pretrained_model(pretrained: tuple[Path, list[dict]], photos: Path, tmp_path) -> None:
    model_dir = pretrained[0] / "model"
    config = load_config(
        recipe="finetune",
        overrides={
            "data": str(photos),
            "init_from": str(model_dir),
            "image_size": SIZE,
            "batch_size": 8,
            "epochs": 1,
            "max_train_batches": 2,
            "rand_augment": None,
            "output_dir": str(tmp_path / "finetune"),
        },
    )
    with pytest.warns(UserWarning, match=r"newly initialised: classifier\.weight.*decoder\.0\.weight") as caught:
        trainer = Trainer(config, Processes(0, 1, torch.device("cpu")))
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1, "one message"
    model = trainer.model
    assert isinstance(model, FocalNetForImageClassification)
    assert model.config.id2label == dict(enumerate(CLASSES)) and model.classifier.out_features == 3
    pretrained_state = final_weights(pretrained[0])
    own = model.state_dict()
    encoder = [k for k in pretrained_state if k.startswith("focalnet.") and not k.endswith("mask_token")]
    assert len(encoder) == len([k for k in own if k.startswith("focalnet.")])
    for key in encoder:
        assert torch.equal(own[key], pretrained_state[key]), key
    assert not any(k.startswith("decoder.") or k.endswith("mask_token") for k in own)
    # the finetune recipe's layer-wise decay: one learning rate per depth, 0.8 apart
    depths = model.config.depths
    rates = sorted({group["lr"] for group in trainer.optimizer.param_groups})
    assert len(rates) == sum(depths) + 2
    assert all(low / high == pytest.approx(0.8) for low, high in itertools.pairwise(rates))
    rows = trainer.fit()
    assert math.isfinite(rows[0]["train_loss"]) and "val_acc1" in rows[0]


@pytest.mark.numerics
def test_pretrain_resumes_after_a_kill_as_if_uninterrupted(photos: Path, tmp_path: Path) -> None:
    common = {"deterministic": True, "checkpoint_every": 3, "drop_path_rate": 0.1, "epochs": 2}
    reference = run_cli(cli_args(pretrain_settings(photos, tmp_path / "reference", **common)), command="pretrain")
    killed_dir = tmp_path / "killed"
    victim = run_cli(cli_args(pretrain_settings(photos, killed_dir, **common)), command="pretrain")
    wait_and_kill(victim, killed_dir)
    finish(run_cli(["--resume", "--output-dir", str(killed_dir)], command="pretrain"))
    finish(reference)
    # exact: the resumed run repeats the same arithmetic (see test_training_runs.py)
    assert max_difference(final_weights(killed_dir), final_weights(tmp_path / "reference")) == 0
    rows = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    reference_rows = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in reference_rows]


@pytest.mark.numerics
def test_two_process_pretraining_equals_one_process(photos: Path, tmp_path: Path) -> None:
    # exact, as one process accumulating the two micro-batches: see test_training_runs.py for why
    settings = {"epochs": 1, "max_train_batches": 4, "deterministic": True, "reconstruction_images": 0}
    settings["eval_batch_size"] = 1
    one_process = cli_args(pretrain_settings(photos, tmp_path / "one", accum_steps=2, **settings))
    two_processes = cli_args(pretrain_settings(photos, tmp_path / "two", **settings))
    single = run_cli(one_process, command="pretrain")
    finish(run_cli(two_processes, torchrun(tmp_path / "logs"), "pretrain"))
    finish(single)
    assert max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "two")) == 0
    one, two = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("one", "two"))
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-12, abs=0)
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-12, abs=0)


def test_unlabelled_sources_and_unreadable_images(tmp_path: Path) -> None:
    """A flat folder (sub-folders searched, names ignored) splits by val_fraction; an unreadable
    file is skipped and counted; a CSV list of bare paths works."""
    root = photo_crops(tmp_path / "crops", train_per_photo=6, val_per_photo=2)
    flat = tmp_path / "flat"
    for index, path in enumerate(sorted(root.rglob("*.png"))):
        target = flat / f"group{index % 2}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    (flat / "group0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    settings = pretrain_settings(flat, tmp_path / "run", epochs=1, batch_size=4, val_fraction=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(load_config(overrides=settings), Processes(0, 1, torch.device("cpu")))
        rows = trainer.fit()
    total = len(trainer.task.train_source) + len(trainer.task.val_source)
    assert total == 25 and len(trainer.task.val_source) == 6
    assert set(trainer.task.train_source.names).isdisjoint(trainer.task.val_source.names)
    assert rows[0]["skipped_images"] >= 1

    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in sorted(flat.rglob("*.png"))[:12]))
    settings = pretrain_settings(None, tmp_path / "listed", epochs=1, batch_size=4, train_list=str(listing))
    settings.pop("data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(load_config(overrides=settings), Processes(0, 1, torch.device("cpu")))
    assert len(trainer.task.train_source) + len(trainer.task.val_source) == 12


def test_validation_masks_are_fixed_per_image(photos: Path, tmp_path: Path) -> None:
    """Every pass over the validation loader gives each image the same mask, and images differ."""
    settings = pretrain_settings(photos, tmp_path / "run", eval_batch_size=5)
    trainer = Trainer(load_config(overrides=settings), Processes(0, 1, torch.device("cpu")))
    first, again = ([masks for _, masks, _ in trainer.val_loader] for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    masks = torch.cat(first)
    assert len(masks) == len(trainer.task.val_source) == 18
    assert len({tuple(mask.flatten().tolist()) for mask in masks}) > 1


def test_image_size_must_fit_the_mask_cells(photos: Path, tmp_path: Path, capsys) -> None:
    from focalnet.cli import main

    args = ["pretrain", *cli_args(pretrain_settings(photos, tmp_path / "bad", image_size=34))]
    assert main(args) == 2
    assert "34x34 is not a multiple of mask_patch_size=4" in capsys.readouterr().err
