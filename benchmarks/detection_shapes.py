"""Faster R-CNN from scratch on the synthetic shapes: FocalNet-T FPN vs torchvision's ResNet-50 FPN.

    .venv/bin/python benchmarks/detection_shapes.py [--minutes 15] [--models focalnet resnet50]
        [--json benchmarks/results/detection-shapes.json]

The seeded shapes dataset (`focalnet.detection.make_shapes_dataset`, 300 training and 60 validation
images by default) is written to a temporary directory (or `--data DIR`, reused when it already holds
a COCO-layout dataset). Each model then trains from random weights in the same loop, for the same
wall-clock budget of training time (`--minutes`, evaluation not counted): same batches in the same
order with the same augmentation (flip, shorter side resized to one of `--scales`, capped at
`--max-size`), same AdamW (lr, weight decay on weights only, gradient clipping), same schedule by
training time (linear warm-up over the first 5% of the budget, then cosine to 1% at its end), same
anchors, image mean/std, RPN and RoI settings, and the same evaluation: the validation images
resized to `--min-size`, COCO bbox mAP from pycocotools (`focalnet.detection.evaluation.coco_evaluate`) every
`--eval-every-minutes` of training and at the end. Target (issue "Detection with FocalNet on
torchvision"): FocalNet's mAP@0.5 >= 0.7 within 15 minutes on this CPU; both models are reported
either way. The exit status is 1 when FocalNet ran and missed the target.

FocalNet side: `fasterrcnn_focalnet("focalnet-tiny")` (embed dim 96, depths 2-2-6-2, focal window 9),
drop path `--drop-path` (0 by default: ResNet-50 has none; the paper uses 0.2 for long runs).
ResNet side: `torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`,
which from scratch trains all five backbone layers with ordinary BatchNorm (torchvision's choice).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from focalnet.detection import fasterrcnn_focalnet, make_shapes_dataset
from focalnet.detection.data import (
    CocoAnnotations,
    CocoDetection,
    collate_detection,
    eval_transform,
    find_split,
    read_annotations,
    train_transform,
)
from focalnet.detection.evaluation import coco_evaluate, load_ground_truth
from focalnet.training.detection import predict_coco
from focalnet.training.optim import parameter_groups

MODELS = ("focalnet", "resnet50")
TARGET_MAP_50, TARGET_MINUTES = 0.7, 15.0
# Objects are 24 px to 45% of the shorter side of 160-256 px images: anchors one octave below torchvision's.
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Fewer proposals and sampled RoIs than torchvision's COCO defaults: at most 4 objects an image.
DETECTOR_SETTINGS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 128,
}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_model(name: str, categories: list[dict[str, Any]], args: argparse.Namespace) -> nn.Module:
    """The Faster R-CNN `name` with random weights (seeded), both built with the same detector settings."""
    torch.manual_seed(args.seed)
    common: dict[str, Any] = {
        "min_size": args.min_size,
        "max_size": args.max_size,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        **DETECTOR_SETTINGS,
    }
    if name == "focalnet":
        model = fasterrcnn_focalnet(
            "focalnet-tiny",
            categories=categories,
            fpn_channels=256,
            backbone_overrides={"drop_path_rate": args.drop_path},
            anchor_sizes=ANCHOR_SIZES,
            aspect_ratios=ASPECT_RATIOS,
            **common,
        )
    else:
        from torchvision.models.detection import fasterrcnn_resnet50_fpn
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        # from scratch torchvision trains all 5 layers (passing trainable_backbone_layers=5 only warns)
        model = fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=len(categories) + 1,
            rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
            **common,
        )
    model.transform._skip_resize = True  # training images come resized by the data pipeline (multi-scale)
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def training_batches(dataset: CocoDetection, batch_size: int, seed: int) -> Iterator[tuple[int, list, list]]:
    """(epoch, images, targets) forever: each epoch a seeded order, each sample its own augmentation
    seed, so every model sees the same batches; the last incomplete batch of an epoch is dropped."""
    count = len(dataset)
    epoch = 0
    while True:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 10_007 + epoch)).tolist()
        for start in range(0, count - batch_size + 1, batch_size):
            samples = [
                dataset[index, seed * 1_000_003 + epoch * count + index] for index in order[start : start + batch_size]
            ]
            images, targets, _ = collate_detection(samples)
            if images:
                yield epoch, images, targets
        epoch += 1


def evaluate(model: nn.Module, val: CocoAnnotations, ground_truth: Any, batch_size: int) -> dict[str, float]:
    """COCO bbox mAP and mAP@0.5 of `model` on the validation split."""
    dataset = CocoDetection(val, eval_transform())
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=[(i, 0) for i in range(len(dataset))], collate_fn=collate_detection
    )
    results, _ = predict_coco(model, loader, val.label_to_category, ("bbox",), torch.device("cpu"))
    stats = coco_evaluate(ground_truth, results).stats
    return {"map_50": round(stats["bbox_map_50"], 4), "map": round(stats["bbox_map"], 4), "detections": len(results)}


def learning_rate_factor(elapsed: float, budget: float, args: argparse.Namespace) -> float:
    """By training time, so both models get the same schedule whatever their speed: linear warm-up from
    1% over the first `--warmup` share of the budget, then constant or cosine down to 1% at its end."""
    progress = min(1.0, elapsed / budget)
    warmup = min(1.0, 0.01 + 0.99 * progress / args.warmup) if args.warmup else 1.0
    if args.schedule == "constant":
        return warmup
    return warmup * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def run_model(name: str, train: CocoAnnotations, val: CocoAnnotations, args: argparse.Namespace) -> dict[str, Any]:
    """Train `name` for the budget, evaluating along the way; its numbers."""
    model = build_model(name, train.categories, args)
    backbone = model.backbone.body
    result: dict[str, Any] = {
        "model": name,
        "parameters": count_parameters(model),
        "backbone_parameters": count_parameters(backbone),
        "evaluations": [],
    }
    print(
        f"\n== {name}: {result['parameters'] / 1e6:.1f}M parameters "
        f"(backbone {result['backbone_parameters'] / 1e6:.1f}M)",
        flush=True,
    )
    groups = parameter_groups(model, args.weight_decay, None, args.lr)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    transform = train_transform(args.scales, args.max_size, hflip=0.5, random_crop=0.0)
    batches = training_batches(CocoDetection(train, transform), args.batch_size, args.seed)
    ground_truth = load_ground_truth(val.path)
    budget = args.minutes * 60.0
    every = args.eval_every_minutes * 60.0 if args.eval_every_minutes else math.inf
    next_evaluation = every
    trained = 0.0  # seconds of training (data included, evaluation excluded)
    step = images_seen = 0
    epoch = 0
    loss_sum, loss_steps = 0.0, 0  # since the last progress line
    last_report = 0.0

    def record() -> None:
        started = time.perf_counter()
        scores = evaluate(model, val, ground_truth, args.batch_size)
        row = {
            "train_minutes": round(trained / 60.0, 2),
            "steps": step,
            "images": images_seen,
            "epochs": round(images_seen / len(train.images), 2),
            **scores,
            "eval_seconds": round(time.perf_counter() - started, 1),
        }
        result["evaluations"].append(row)
        print(
            f"  eval at {row['train_minutes']:.1f} min ({step} steps, {row['epochs']:.2f} epochs): "
            f"mAP@0.5 {row['map_50']:.4f}  mAP {row['map']:.4f}  ({row['eval_seconds']:.0f} s)",
            flush=True,
        )

    model.train()
    while trained < budget:
        started = time.perf_counter()
        epoch, images, targets = next(batches)
        factor = learning_rate_factor(trained, budget, args)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * factor
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: loss {loss.item()} at step {step}; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        trained += time.perf_counter() - started
        step += 1
        images_seen += len(images)
        loss_sum, loss_steps = loss_sum + loss.item(), loss_steps + 1
        if trained - last_report >= 30.0 or trained >= budget:
            print(
                f"  {trained / 60.0:5.1f} min  step {step:5d}  epoch {epoch}  loss {loss_sum / loss_steps:.3f}  "
                f"{images_seen / trained:.2f} img/s  lr {args.lr * factor:.2e}",
                flush=True,
            )
            loss_sum, loss_steps, last_report = 0.0, 0, trained
        if trained >= next_evaluation and trained < budget:
            record()
            next_evaluation += every
    record()
    result.update(
        train_seconds=round(trained, 1),
        steps=step,
        images=images_seen,
        epochs=round(images_seen / len(train.images), 2),
        train_images_per_sec=round(images_seen / trained, 3),
        final_map_50=result["evaluations"][-1]["map_50"],
        final_map=result["evaluations"][-1]["map"],
    )
    return result


def dataset(root: Path, args: argparse.Namespace) -> tuple[CocoAnnotations, CocoAnnotations]:
    """The train and val annotations under `root`, writing the shapes dataset there first if it has none."""
    try:
        find_split(root, "train"), find_split(root, "val")
        print(f"using the dataset already in {root}", flush=True)
    except FileNotFoundError:
        make_shapes_dataset(root, args.train_images, args.val_images, seed=args.seed)
    train, val = (read_annotations(*find_split(root, split)) for split in ("train", "val"))
    return train, val


def table(results: list[dict[str, Any]]) -> str:
    """The summary and the evaluations, as plain-text tables."""
    lines = [
        f"{'model':<10} {'params':>8} {'backbone':>9} {'train img/s':>11} {'steps':>6} {'epochs':>6} "
        f"{'mAP@0.5':>8} {'mAP':>7}"
    ]
    for r in results:
        lines.append(
            f"{r['model']:<10} {r['parameters'] / 1e6:>7.1f}M {r['backbone_parameters'] / 1e6:>8.1f}M "
            f"{r['train_images_per_sec']:>11.2f} {r['steps']:>6} {r['epochs']:>6.2f} "
            f"{r['final_map_50']:>8.4f} {r['final_map']:>7.4f}"
        )
    lines += ["", f"{'model':<10} {'train min':>9} {'steps':>6} {'epochs':>6} {'mAP@0.5':>8} {'mAP':>7}"]
    for r in results:
        for e in r["evaluations"]:
            lines.append(
                f"{r['model']:<10} {e['train_minutes']:>9.2f} {e['steps']:>6} {e['epochs']:>6.2f} "
                f"{e['map_50']:>8.4f} {e['map']:>7.4f}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--minutes", type=float, default=TARGET_MINUTES, help="training time per model")
    parser.add_argument("--eval-every-minutes", type=float, default=5.0, help="0: only at the end")
    parser.add_argument("--data", type=Path, help="dataset directory (written there if it holds none)")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.05, help="share of the budget for the lr warm-up")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0: no clipping)")
    parser.add_argument("--drop-path", type=float, default=0.0, help="FocalNet's stochastic depth")
    parser.add_argument("--scales", type=int, nargs="+", default=[160, 176, 192, 208, 224])
    parser.add_argument("--min-size", type=int, default=192, help="evaluation: shorter side")
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    machine = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    import torchvision

    machine["torchvision"] = torchvision.__version__
    print(
        f"{machine['cpu']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, torchvision {machine['torchvision']}, {machine['date']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="detection-shapes-") as temporary:
        root = args.data or Path(temporary) / "shapes"
        train, val = dataset(root, args)
        print(f"{len(train.images)} training, {len(val.images)} validation images in {root}", flush=True)
        results = [run_model(name, train, val, args) for name in args.models]
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings.update(anchor_sizes=ANCHOR_SIZES, aspect_ratios=ASPECT_RATIOS, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    settings.update(DETECTOR_SETTINGS)
    output = {"machine": machine, "settings": settings, "results": results}
    print("\n" + table(results))
    focal = next((r for r in results if r["model"] == "focalnet"), None)
    met = True
    if focal is not None:
        met = focal["final_map_50"] >= TARGET_MAP_50 and args.minutes <= TARGET_MINUTES
        print(
            f"\nFocalNet mAP@0.5 {focal['final_map_50']:.4f} after {args.minutes:g} min "
            f"(target >= {TARGET_MAP_50} within {TARGET_MINUTES:g} min): {'met' if met else 'NOT met'}"
        )
        output["target_met"] = met
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
