"""End-to-end runs of `focalnet train` / `evaluate`: learning, resume after a kill, DDP equivalence,
fine-tuning to other classes, unreadable images and damaged checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_close
from focalnet import FocalNetForImageClassification
from focalnet.cli import main
from focalnet.training import Trainer, load_config, train
from focalnet.training.data import export_digits
from focalnet.training.distributed import Processes

pytest.importorskip("sklearn", reason="the digits runs need scikit-learn (the demo extra)")

TINY_MODEL = {"embed_dim": 16, "depths": [1, 1], "focal_levels": [2, 2], "focal_windows": [3, 3], "patch_size": 2}
METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_acc1", "val_acc5", "lr", "images_per_sec"}


def tiny_run(output_dir: Path, **overrides) -> dict:
    """Settings of a few-second digits run, as `--set` would give them."""
    return {"model_overrides": TINY_MODEL, "epochs": 2, "batch_size": 32, "output_dir": str(output_dir), **overrides}


def cli_args(settings: dict) -> list[str]:
    return ["--recipe", "demo", *(f"--set={key}={json.dumps(value)}" for key, value in settings.items())]


def run_cli(args: list[str], launcher: list[str] | None = None, command: str = "train", **popen) -> subprocess.Popen:
    """`focalnet COMMAND ARGS` in a subprocess (one thread), optionally under a launcher such as torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command_line = (launcher or [sys.executable, "-m", "focalnet.cli"]) + [command, *args]
    return subprocess.Popen(command_line, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def torchrun(log_dir: Path, *program: str) -> list[str]:
    """A launcher of two local processes (gloo on the CPU) running `program` (default `-m focalnet.cli`);
    torchrun's own logs go to `log_dir` instead of a `torchelastic_*` folder left in the system's /tmp."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*launcher, f"--log-dir={log_dir}", *(program or ("-m", "focalnet.cli"))]


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return out


def wait_and_kill(victim: subprocess.Popen, output_dir: Path) -> None:
    """SIGKILL a run as soon as it has written its first mid-epoch checkpoint."""
    checkpoint = output_dir / "checkpoint-last.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    progress = torch.load(checkpoint, weights_only=True)["progress"]
    assert progress["epoch"] == 0 and progress["batch"] > 0, "the kill should land mid-epoch"
    assert not (output_dir / "model").exists()


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A shortened demo run (in this process): the demo model, 3 epochs instead of 30."""
    output_dir = tmp_path_factory.mktemp("demo")
    settings = {"epochs": 3, "warmup_epochs": 0.5, "output_dir": str(output_dir)}
    train(load_config(recipe="demo", overrides=settings))
    return output_dir


def test_short_demo_run_learns_and_writes_its_outputs(trained: Path) -> None:
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(row.keys() >= METRIC_KEYS for row in rows)
    assert rows[-1]["val_acc1"] > 50, rows  # chance is 10%
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained / "model" / "preprocessor_config.json").is_file()

    # the saved model is a plain HF checkpoint: transformers reads it and agrees with us
    from transformers import FocalNetForImageClassification as HFClassifier

    ours = FocalNetForImageClassification.from_pretrained(trained / "model")
    theirs = HFClassifier.from_pretrained(trained / "model").eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, theirs(pixels).logits, atol=1e-5, rtol=0)
    assert ours.config.id2label[3] == "3"


def test_evaluate_and_predict_on_the_trained_model(trained: Path, tmp_path: Path, capsys) -> None:
    report_dir = tmp_path / "eval"
    assert (
        main(["evaluate", "--model", str(trained / "model"), "--data", "digits", "--output-dir", str(report_dir)]) == 0
    )
    report = json.loads((report_dir / "evaluation.json").read_text())
    last = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["acc1"] == pytest.approx(last["val_acc1"])  # the same preprocessing as validation
    assert report["loss"] == pytest.approx(last["val_loss"], abs=1e-5)
    assert report["images"] == 359 and sum(map(sum, report["confusion_matrix"])) == 359
    assert set(report["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert (report_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    samples = export_digits(tmp_path / "samples", count=4)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "samples"), "--model", str(trained / "model"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == len(samples)


def image_folder_from_digits(root: Path, classes: tuple[str, ...]) -> None:
    """train/ and val/ class folders of digit PNGs for `classes`, plus one corrupt file in train/."""
    for split in ("train", "val"):
        staging = root / f"staging-{split}"
        for path in export_digits(staging, count=400 if split == "train" else 120, split=split):
            label = path.stem.split("label")[1]
            if label in classes:
                (root / split / f"digit{label}").mkdir(parents=True, exist_ok=True)
                path.rename(root / split / f"digit{label}" / path.name)
    (root / "train" / f"digit{classes[0]}" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_finetune_to_other_classes_with_a_corrupt_image(trained: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    image_folder_from_digits(data, ("0", "1", "7"))
    output_dir = tmp_path / "finetune"
    settings = tiny_run(output_dir, data=str(data), init_from=str(trained / "model"), batch_size=16, model_overrides={})
    with pytest.warns(UserWarning, match="replaced the 10-class classifier"):
        rows = train(load_config(recipe="finetune", overrides={**load_config(recipe="demo").to_dict(), **settings}))
    assert rows[-1]["skipped_images"] >= 1  # the broken file was skipped and counted, not fatal
    model = FocalNetForImageClassification.from_pretrained(output_dir / "model")
    assert model.config.id2label == {0: "digit0", 1: "digit1", 2: "digit7"}
    assert rows[-1]["val_acc1"] > 80  # three easy classes, starting from digit features


def test_freeze_backbone_trains_only_the_head(trained: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "probe"
    settings = {**load_config(recipe="demo").to_dict(), **tiny_run(output_dir, epochs=1, max_train_batches=3)}
    settings.update(init_from=str(trained / "model"), freeze_backbone=True, model_overrides={})
    train(load_config(overrides=settings))
    before, after = final_weights(trained), final_weights(output_dir)
    backbone = [k for k in before if not k.startswith("classifier.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


@pytest.mark.numerics
def test_resume_after_kill_mid_epoch_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    common = {"deterministic": True, "checkpoint_every": 10, "drop_path_rate": 0.1, "mixup": 0.2}
    reference = run_cli(cli_args(tiny_run(tmp_path / "reference", **common)))
    killed_dir = tmp_path / "killed"
    victim = run_cli(cli_args(tiny_run(killed_dir, **common)))
    wait_and_kill(victim, killed_dir)

    finish(run_cli(["--resume", "--output-dir", str(killed_dir)]))
    finish(reference)
    # Exact: the resumed run repeats the reference's arithmetic operation for operation (same shapes,
    # so the same kernels; weights, optimiser state and every RNG restored bit for bit from the checkpoint).
    assert max_difference(final_weights(killed_dir), final_weights(tmp_path / "reference")) == 0
    killed_rows = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert len(killed_rows) == 2


# Why two processes equal one process accumulating two micro-batches exactly, on any CPU:
# * the sampler cuts each global batch into one slice per rank, and one process takes the same slices
#   as its micro-batches in rank order; every sample's augmentation (and mask, and box sampling) comes
#   from its own seed; so each micro-batch's forward and backward run on the same shapes with the same
#   kernels and give the same bits in both runs;
# * the gradients meet as g0/2 + g1/2 in both: DDP divides by the 2 processes and sums, accumulation
#   scales each micro-batch's loss by 1/2; halving is exact in floating point and a sum of two terms is
#   the same in either order;
# * validation runs one image at a time (eval_batch_size 1), so each image's prediction does not depend
#   on which process or batch it lands in, and the metrics are sums of the same per-image terms (in
#   another order: float64 sums of a few hundred terms, equal to 1e-12 relative; counts are exact).
# A full-batch single process would not do: other batch shapes pick other kernels on other CPUs, and
# AdamW's first steps move a weight by about the learning rate whatever the size of its gradient, so a
# near-zero gradient that changes sign with the rounding moved weights by 1e-3 on an AMD EPYC.
# (`test_gradient_accumulation_equals_the_full_batch` checks accumulation against the full batch.)
@pytest.mark.numerics
def test_two_process_gloo_run_equals_one_process(tmp_path: Path) -> None:
    settings = {"epochs": 1, "max_train_batches": 6, "batch_size": 32, "deterministic": True, "eval_batch_size": 1}
    single = run_cli(cli_args(tiny_run(tmp_path / "one", accum_steps=2, **settings)))
    finish(run_cli(cli_args(tiny_run(tmp_path / "two", **settings)), launcher=torchrun(tmp_path / "logs")))
    finish(single)
    assert max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "two")) == 0
    one, two = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("one", "two"))
    assert one["val_acc1"] == two["val_acc1"] and one["val_acc5"] == two["val_acc5"]  # sharded and summed
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-12, abs=0)
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-12, abs=0)


def test_corrupt_resume_checkpoint_is_reported_and_left_alone(tmp_path: Path, capsys) -> None:
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    damaged = output_dir / "checkpoint-last.pt"
    damaged.write_bytes(b"PK\x03\x04 truncated zip")
    assert main(["train", "--resume", "--output-dir", str(output_dir)]) == 2
    assert "not a readable training checkpoint" in capsys.readouterr().err
    assert damaged.read_bytes() == b"PK\x03\x04 truncated zip"

    # starting a new run over it needs an explicit choice
    assert main(["train", *cli_args(tiny_run(output_dir))]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert damaged.read_bytes() == b"PK\x03\x04 truncated zip"


class FirstStepGradients(Trainer):
    """A trainer that keeps the gradients of its first optimiser step and stops there."""

    def _optimizer_step(self) -> None:
        self.gradients = {name: p.grad.clone() for name, p in self.model.named_parameters() if p.grad is not None}
        raise StopIteration


def first_step_gradients(config) -> dict[str, torch.Tensor]:
    trainer = FirstStepGradients(config, Processes(0, 1, torch.device("cpu")))
    with pytest.raises(StopIteration):
        trainer.fit()
    return trainer.gradients


@pytest.mark.numerics
def test_gradient_accumulation_equals_the_full_batch(tmp_path: Path) -> None:
    """Four accumulated micro-batches of 8 give the full batch of 32's gradient.

    Gradients, not weights after AdamW: AdamW moves every weight by about the learning rate on its
    first steps whatever the gradient's size, so weights would turn rounding into lr-sized steps
    (and could not tell a wrongly scaled accumulation, which AdamW's normalisation hides). The two
    gradients are the same sums over the same samples and tokens, grouped and ordered differently,
    in fp32: they differ by rounding, a few units of fp32's 1.2e-7 relative to the terms summed,
    which cancel down to the result (measured: at most 1.9e-6 of a tensor's largest entry, on an AMD
    EPYC with AVX-512, AVX2 and no vector extensions). The bound allows 1e-4 of it; a gradient scaled
    by the wrong factor, or one missing a micro-batch, is off by 25% or more."""
    settings = {**tiny_run(tmp_path / "full", epochs=1, max_train_batches=1), "drop_path_rate": 0.0}
    full = first_step_gradients(load_config(recipe="demo", overrides=settings))
    accumulated = first_step_gradients(load_config(recipe="demo", overrides={**settings, "accum_steps": 4}))
    assert full.keys() == accumulated.keys() and len(full) > 10
    for name, gradient in full.items():
        scale = gradient.abs().max().item()
        assert scale > 0, name
        assert_close(accumulated[name], gradient, atol=1e-4 * scale, what=name)


def test_every_recipe_option_runs_together(tmp_path: Path) -> None:
    """RandAugment, random erasing, MixUp + CutMix, EMA, bf16 autocast, channels_last, layer decay,
    accumulation and frozen stages in one short run; the saved model is the EMA one."""
    options = {
        "rand_augment": "rand-m9-mstd0.5-inc1",
        "random_erasing": 0.25,
        "mixup": 0.8,
        "cutmix": 1.0,
        "ema_decay": 0.9,
        "amp": "bf16",
        "channels_last": True,
        "layer_decay": 0.8,
        "accum_steps": 2,
        "freeze_stages": 1,
        "drop_path_rate": 0.1,
    }
    rows = train(load_config(recipe="demo", overrides=tiny_run(tmp_path, epochs=1, max_train_batches=4, **options)))
    assert rows[0]["step"] == 4 and torch.isfinite(torch.tensor(rows[0]["train_loss"]))
    checkpoint = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    saved = final_weights(tmp_path)
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert not all(torch.equal(saved[k], checkpoint["model"][k]) for k in saved)
