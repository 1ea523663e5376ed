"""Faster R-CNN from scratch on the synthetic shapes: FocalNet-T FPN vs torchvision's ResNet-50 FPN.

    .venv/bin/python benchmarks/detection_shapes.py [--minutes 15] [--models focalnet resnet50]
        [--json benchmarks/results/detection-shapes.json]

The seeded shapes dataset (`focalnet make-shapes`: 300 training and 60 validation images of
160-256 px) is written to a temporary directory (or `--data DIR`). Both detectors are trained from
random weights by the library's own engine (`focalnet.training.train`, task "detection"), with the
same settings: batches, augmentation (flip, shorter side one of `--scales`), AdamW, cosine schedule
over the run, anchors, RPN and RoI settings, evaluation (COCO mAP from pycocotools on the
validation images resized to `--min-size`, after every epoch).

The budget is training time. A short calibration run (`--calibration-batches`) measures each
model's training images/s; its run then gets as many images as fit in `--minutes` at that speed,
in whole epochs cut alike (`max_train_batches`), so each learning-rate schedule ends at its
budget. Reported per model: parameters, images/s, and mAP@0.5 / mAP after each epoch against the
cumulative training minutes. Target (the detection issue): FocalNet's mAP@0.5 >= 0.7 within 15
minutes; both models are reported either way.

FocalNet: `fasterrcnn_focalnet("focalnet-tiny")` (embed 96, depths 2-2-6-2, focal window 9), drop path
0 (ResNet-50 has none; the runs are short). ResNet: `fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)`, all layers trained with BatchNorm, as torchvision builds it from scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focalnet.benchmark import machine_info
from focalnet.detection import make_shapes_dataset
from focalnet.detection.models import DetectorConfig
from focalnet.training import load_config, train
from focalnet.training.detection import DetectionTask, seeded_samplers

MODELS = ("focalnet", "resnet50")
TARGET_MAP_50, TARGET_MINUTES = 0.7, 15.0
# Objects are 24 px to 45% of the shorter side of 160-256 px images: anchors one octave below torchvision's.
ANCHOR_SIZES = [[16], [32], [64], [128], [256]]
# Fewer proposals and sampled RoIs than torchvision's COCO defaults: at most 4 objects an image.
DETECTOR_SETTINGS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 128,
}


class ResNet50DetectionTask(DetectionTask):
    """The detection task with torchvision's ResNet-50 FPN Faster R-CNN in place of FocalNet's."""

    def build_model(self) -> nn.Module:
        from torchvision.models.detection import fasterrcnn_resnet50_fpn
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        config = self.config
        kwargs = {key: value for key, value in config.detector_kwargs.items() if key not in ("fpn_channels",)}
        sizes = tuple(tuple(level) for level in kwargs.pop("anchor_sizes"))
        model = fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=len(self.categories) + 1,
            rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)),
            min_size=config.min_size,
            max_size=config.max_size,
            image_mean=list(config.mean),
            image_std=list(config.std),
            **kwargs,
        )
        model.transform._skip_resize = True
        model.detector_config = DetectorConfig("faster_rcnn", {}, self.categories)
        self.samplers = seeded_samplers(model)
        return model

    def save_model(self, model: nn.Module, directory: Path) -> None:
        """Nothing to keep: only the numbers matter here."""


def settings(args: argparse.Namespace, data: Path, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """The training config both models share."""
    return {
        "task": "detection",
        "data": str(data),
        "output_dir": str(output_dir),
        "model": "focalnet-tiny",
        "drop_path_rate": 0.0,
        "detector_kwargs": {"fpn_channels": 256, "anchor_sizes": ANCHOR_SIZES, **DETECTOR_SETTINGS},
        "min_size": args.min_size,
        "max_size": args.max_size,
        "scales": args.scales,
        "random_crop": 0.0,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_scale_batch": None,
        "schedule": "cosine",
        "warmup_epochs": 0.1,
        "min_lr": args.lr / 100,
        "clip_grad": 10.0,
        "seed": args.seed,
        **extra,
    }


def run_model(name: str, args: argparse.Namespace, data: Path, scratch: Path) -> dict[str, Any]:
    """Calibrate the speed, then train for the budget; the per-epoch numbers and what they cost."""
    task_class = ResNet50DetectionTask if name == "resnet50" else DetectionTask
    probe = settings(args, data, scratch / f"{name}-probe", epochs=1, max_train_batches=args.calibration_batches)
    speed = train(load_config(recipe="detection", overrides=probe), overwrite=True, task_class=task_class)[0]
    images_per_sec = speed["images_per_sec"]
    budget_batches = max(1, math.floor(args.minutes * 60 * images_per_sec / args.batch_size))
    batches_per_epoch = args.train_images // args.batch_size
    epochs = math.ceil(budget_batches / batches_per_epoch)
    batches = min(batches_per_epoch, budget_batches // epochs)  # every epoch cut alike to fit the budget
    train_images = batches * args.batch_size
    print(f"{name}: {images_per_sec:.2f} img/s in calibration -> {epochs} epochs of {train_images} images", flush=True)
    run = settings(args, data, scratch / name, epochs=epochs, max_train_batches=batches)
    history = train(load_config(recipe="detection", overrides=run), overwrite=True, task_class=task_class)
    minutes, evaluations = 0.0, []
    for row in history:
        minutes += train_images / row["images_per_sec"] / 60
        evaluations.append(
            {
                "epoch": row["epoch"],
                "train_minutes": minutes,
                "map_50": row["val_bbox_map_50"],
                "map": row["val_bbox_map"],
            }
        )
    within = [e for e in evaluations if e["train_minutes"] <= args.minutes * 1.05] or evaluations[:1]
    return {
        "model": name,
        "calibration_images_per_sec": images_per_sec,
        "train_images_per_sec": sum(r["images_per_sec"] for r in history) / len(history),
        "epochs": epochs,
        "evaluations": evaluations,
        "map_50_within_budget": max(e["map_50"] for e in within),
    }


def parameters(name: str) -> int:
    if name == "resnet50":
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    else:
        from focalnet.detection import fasterrcnn_focalnet

        model = fasterrcnn_focalnet("focalnet-tiny", num_classes=4)
    return sum(p.numel() for p in model.parameters())


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<10} {'params':>8} {'train img/s':>11} {'epochs':>6} {'best mAP@0.5 in budget':>23}"]
    for r in results:
        lines.append(
            f"{r['model']:<10} {r['parameters'] / 1e6:>7.1f}M {r['train_images_per_sec']:>11.2f} {r['epochs']:>6} "
            f"{r['map_50_within_budget']:>23.4f}"
        )
    lines += ["", f"{'model':<10} {'epoch':>5} {'train min':>9} {'mAP@0.5':>8} {'mAP':>7}"]
    for r in results:
        for e in r["evaluations"]:
            lines.append(
                f"{r['model']:<10} {e['epoch']:>5} {e['train_minutes']:>9.2f} {e['map_50']:>8.4f} {e['map']:>7.4f}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--minutes", type=float, default=TARGET_MINUTES, help="training time per model")
    parser.add_argument("--data", type=Path, help="dataset directory (written there if it holds none)")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--scales", type=int, nargs="+", default=[160, 176, 192, 208, 224])
    parser.add_argument("--min-size", type=int, default=192, help="evaluation: shorter side")
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)

    machine = machine_info("cpu")
    print(f"{machine['cpu']}, {machine['cpu_count']} CPUs, torch {torch.__version__}, {machine['date']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="detection-shapes-") as temporary:
        scratch = Path(temporary)
        data = args.data or scratch / "shapes"
        if not (data / "annotations").is_dir():
            make_shapes_dataset(data, args.train_images, args.val_images, seed=args.seed)
        results = [{**run_model(name, args, data, scratch), "parameters": parameters(name)} for name in args.models]
    print("\n" + table(results))
    output = {"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()}, "results": results}
    focal = next((r for r in results if r["model"] == "focalnet"), None)
    met = focal is None or (focal["map_50_within_budget"] >= TARGET_MAP_50 and args.minutes <= TARGET_MINUTES)
    if focal is not None:
        print(
            f"\nFocalNet mAP@0.5 within {args.minutes:g} min: {focal['map_50_within_budget']:.4f} "
            f"(target >= {TARGET_MAP_50} within {TARGET_MINUTES:g} min): {'met' if met else 'NOT met'}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(output, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
