"""UperNet on FocalNet: mIoU on the synthetic shapes after a wall-clock budget, and the inference cost
of the full model at 512x512 against the same UperNet head on torchvision's ResNet-50.

    .venv/bin/python benchmarks/segmentation_shapes.py [--minutes 15] [--models focalnet resnet50]
        [--skip-training] [--skip-inference] [--json benchmarks/results/segmentation-shapes.json]

Training: the seeded shapes (`focalnet make-shapes --layout ade20k`: 300 training and 60 validation
images of 160-256 px, 4 classes with the background) are written to a temporary directory (or
`--data DIR`). Each model trains from random weights on the library's engine (task
"semantic-segmentation": crops of `--crop` px from images rescaled to fit `--base-size` x 0.5-2.0,
flip, photometric distortion, AdamW with the poly schedule) and is validated (whole-set mIoU,
images rescaled to fit `--base-size`) after every epoch. A short calibration run measures each
model's training images/s; its run then gets as many epochs as fit in `--minutes` at that speed, so
the schedule ends at the budget. Target (the segmentation issue): mIoU >= 0.7 within 15 minutes.

Inference: `UperNetForSemanticSegmentation` with FocalNet-T (focal window 9, the paper's model, 150
classes, 512 channels) against the same `UperNetHead` + `UperNetFCNHead` on ResNet-50's four stages,
both in eval mode, fp32 (or `--bf16` autocast), batch `--batch-size-inference`, 512x512, on
`--device`; median of `--repeats` timed runs taken in turns; FLOPs from `torch.utils.flop_counter`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from focalnet.benchmark import machine_info
from focalnet.detection import make_shapes_dataset
from focalnet.outputs import SemanticSegmenterOutput
from focalnet.segmentation import UperNetConfig, UperNetFCNHead, UperNetForSemanticSegmentation, UperNetHead
from focalnet.training import load_config, train
from focalnet.training.segmentation import SemanticSegmentationTask

MODELS = ("focalnet", "resnet50")
TARGET_MIOU, TARGET_MINUTES = 0.7, 15.0
RESNET_WIDTHS = [256, 512, 1024, 2048]


class ResNet50UperNet(nn.Module):
    """torchvision's ResNet-50 (its four stages, strides 4-32) under our UperNet heads, with the
    forward contract of `UperNetForSemanticSegmentation`."""

    def __init__(self, config: UperNetConfig) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.config = config
        self.backbone = resnet50()
        self.decode_head = UperNetHead(config, RESNET_WIDTHS)
        self.auxiliary_head = UperNetFCNHead(config, RESNET_WIDTHS)

    def feature_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        body = self.backbone
        x = body.maxpool(body.relu(body.bn1(body.conv1(pixel_values))))
        maps = []
        for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SemanticSegmenterOutput:
        maps = self.feature_maps(pixel_values)
        size = pixel_values.shape[2:]
        logits = F.interpolate(self.decode_head(maps), size=size, mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            auxiliary = F.interpolate(self.auxiliary_head(maps), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, labels, ignore_index=255)
            loss = loss + self.config.auxiliary_loss_weight * F.cross_entropy(auxiliary, labels, ignore_index=255)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


class ResNet50SegmentationTask(SemanticSegmentationTask):
    """The semantic-segmentation task with `ResNet50UperNet` in place of FocalNet's UperNet."""

    def build_model(self) -> nn.Module:
        config = UperNetConfig(id2label=dict(enumerate(self.class_names)), **self.config.head_overrides)
        return ResNet50UperNet(config).train()

    def save_model(self, model: nn.Module, directory: Path) -> None:
        """Nothing to keep: only the numbers matter here."""


# ------------------------------------------------------------------------------------------------
# mIoU after a training budget
def settings(args: argparse.Namespace, data: Path, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """The training config both models share."""
    return {
        "task": "semantic-segmentation",
        "data": str(data),
        "output_dir": str(output_dir),
        "model": "focalnet-tiny",
        "model_overrides": args.model_overrides,
        "drop_path_rate": 0.0,
        "head_overrides": {"hidden_size": args.hidden_size, "auxiliary_channels": args.hidden_size // 2},
        "image_size": args.crop,
        "base_size": args.base_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "head_lr_scale": args.head_lr_scale,
        "lr_scale_batch": None,
        "warmup_epochs": 0.5,
        "min_lr": 0.0,
        "weight_decay": 0.01,
        "seed": args.seed,
        **extra,
    }


def run_model(name: str, args: argparse.Namespace, data: Path, scratch: Path) -> dict[str, Any]:
    """Calibrate the speed, then train for the budget; the per-epoch numbers and what they cost."""
    task_class = ResNet50SegmentationTask if name == "resnet50" else SemanticSegmentationTask
    probe = settings(args, data, scratch / f"{name}-probe", epochs=1, max_train_batches=args.calibration_batches)
    speed = train(load_config(recipe="segmentation", overrides=probe), overwrite=True, task_class=task_class)[0]
    images_per_sec = speed["images_per_sec"]
    batches_per_epoch = args.train_images // args.batch_size
    budget_batches = max(1, math.floor(args.minutes * 60 * images_per_sec / args.batch_size))
    epochs = max(1, budget_batches // batches_per_epoch)
    print(f"{name}: {images_per_sec:.2f} img/s in calibration -> {epochs} epochs", flush=True)
    run = settings(args, data, scratch / name, epochs=epochs)
    history = train(load_config(recipe="segmentation", overrides=run), overwrite=True, task_class=task_class)
    minutes, evaluations = 0.0, []
    for row in history:
        minutes += batches_per_epoch * args.batch_size / row["images_per_sec"] / 60
        evaluations.append({"epoch": row["epoch"], "train_minutes": minutes, "miou": row["val_miou"]})
    within = [e for e in evaluations if e["train_minutes"] <= args.minutes * 1.05] or evaluations[:1]
    return {
        "model": name,
        "calibration_images_per_sec": images_per_sec,
        "train_images_per_sec": sum(r["images_per_sec"] for r in history) / len(history),
        "epochs": epochs,
        "evaluations": evaluations,
        "miou_within_budget": max(e["miou"] for e in within),
        "final_pixel_accuracy": history[-1]["val_pixel_accuracy"],
    }


# ------------------------------------------------------------------------------------------------
# inference cost at 512x512
def inference_models() -> dict[str, nn.Module]:
    focalnet = UperNetForSemanticSegmentation.from_backbone("focalnet-tiny", num_labels=150)
    resnet = ResNet50UperNet(UperNetConfig(num_labels=150))
    return {"focalnet": focalnet.eval(), "resnet50": resnet.eval()}


def count_flops(model: nn.Module, pixels: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixels)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    models = {name: model.to(device) for name, model in inference_models().items()}
    pixels = torch.randn(args.batch_size_inference, 3, 512, 512, device=device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
        for model in models.values():
            for _ in range(args.warmup):
                model(pixels)
        seconds: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(args.repeats):
            names = list(models)[repeat % len(models) :] + list(models)[: repeat % len(models)]  # take turns
            for name in names:
                synchronize(device)
                started = time.perf_counter()
                models[name](pixels)
                synchronize(device)
                seconds[name].append(time.perf_counter() - started)
    results = []
    for name, model in models.items():
        median = statistics.median(seconds[name])
        results.append(
            {
                "model": name,
                "parameters": sum(p.numel() for p in model.parameters()),
                "gflops_per_image": count_flops(model, pixels[:1].float()) / 1e9,
                "ms_per_batch": median * 1000,
                "images_per_sec": args.batch_size_inference / median,
            }
        )
    return results


# ------------------------------------------------------------------------------------------------
def report(training: list[dict[str, Any]], inference: list[dict[str, Any]]) -> str:
    lines = []
    if inference:
        lines.append(f"{'model':<10} {'params':>8} {'GFLOPs/img':>10} {'ms/batch':>9} {'img/s':>7}")
        for r in inference:
            lines.append(
                f"{r['model']:<10} {r['parameters'] / 1e6:>7.1f}M {r['gflops_per_image']:>10.1f} "
                f"{r['ms_per_batch']:>9.1f} {r['images_per_sec']:>7.2f}"
            )
        if len(inference) == 2:
            ratio = inference[0]["ms_per_batch"] / inference[1]["ms_per_batch"]
            lines.append(f"FocalNet / ResNet-50 time: {ratio:.2f}x")
        lines.append("")
    if training:
        lines.append(f"{'model':<10} {'train img/s':>11} {'epochs':>6} {'best mIoU in budget':>20}")
        for r in training:
            lines.append(
                f"{r['model']:<10} {r['train_images_per_sec']:>11.2f} {r['epochs']:>6} {r['miou_within_budget']:>20.4f}"
            )
        lines += ["", f"{'model':<10} {'epoch':>5} {'train min':>9} {'mIoU':>7}"]
        for r in training:
            for e in r["evaluations"]:
                lines.append(f"{r['model']:<10} {e['epoch']:>5} {e['train_minutes']:>9.2f} {e['miou']:>7.4f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["focalnet"], help="models to train")
    parser.add_argument("--minutes", type=float, default=TARGET_MINUTES, help="training time per model")
    parser.add_argument("--data", type=Path, help="dataset directory (written there if it holds none)")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--base-size", type=int, nargs=2, default=[256, 192])
    parser.add_argument("--hidden-size", type=int, default=64, help="UperNet channels in training")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--head-lr-scale", type=float, default=0.1, help="the heads' learning rate / --lr")
    parser.add_argument(
        "--model-overrides",
        type=json.loads,
        default={"embed_dim": 32, "depths": [1, 1, 2, 1]},
        help='FocalNet config fields on FocalNet-T, as JSON (default: a small one, {"embed_dim": 32, ...})',
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-batches", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--batch-size-inference", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="inference timing device (training runs on the CPU)")
    parser.add_argument("--bf16", action="store_true", help="inference timing under bf16 autocast")
    parser.add_argument("--json", type=Path, help="write every number, with the machine, to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)

    inference = [] if args.skip_inference else time_inference(args)
    training = []
    if not args.skip_training:
        with tempfile.TemporaryDirectory(prefix="focalnet-segmentation-") as scratch:
            data = args.data or Path(scratch) / "shapes"
            if not (data / "labels.txt").is_file():
                make_shapes_dataset(data, args.train_images, args.val_images, seed=args.seed, layout="ade20k")
            training = [run_model(name, args, data, Path(scratch)) for name in args.models]
    text = report(training, inference)
    print(text)
    if args.json:
        result = {
            "machine": machine_info(args.device),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "inference": inference,
            "training": training,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
