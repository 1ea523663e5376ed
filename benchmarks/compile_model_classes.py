"""`torch.compile` (inductor, default settings) of every FocalNet model class, against the same class
eager and, where timm has the model, against compiled timm with the same weights.

    .venv/bin/python benchmarks/compile_model_classes.py [--preset focalnet-tiny] [--batch-size 8]
        [--repeats 7] [--json benchmarks/results/compile-model-classes.json]

Classes: `FocalNetForImageClassification` (timm: `FocalNet`), `FocalNetBackbone` with all four
stages (timm: `FocalNet.forward_intermediates` of all four stages), `FocalNetModel` and
`FocalNetForMaskedImageModeling` (a 60% mask; timm has neither). All fp32, eval mode, under
`torch.inference_mode()`, at 224 px; every model of a class runs once per round, in rotating
order, after warm-up runs in which compilation happens; the median of `--repeats` rounds is
reported. Before timing, each compiled model's outputs are compared with its eager self.
Target (issue 11, CPU, batch 8): compiled >= 1.0x ours eager and >= 1.1x compiled timm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import focalnet
from focalnet._io import atomic_write
from focalnet.benchmark import format_machine, machine_info, preset_configs, time_interleaved, timm_model

Outputs = Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]


def _classification(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    output = model(pixels)
    return [output if isinstance(output, torch.Tensor) else output.logits]


def _backbone(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    return list(model(pixels).feature_maps)


def _bare(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    return [model(pixels).last_hidden_state]


def _masked_image_modeling(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    patches = (pixels.shape[-2] // 4) * (pixels.shape[-1] // 4)
    mask = torch.rand(pixels.shape[0], patches, generator=torch.Generator().manual_seed(0)) < 0.6
    return [model(pixels, bool_masked_pos=mask).reconstruction]


class TimmIntermediates(nn.Module):
    """timm's FocalNet as a backbone: the NCHW maps of all four stages."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(pixels, intermediates_only=True)


def _timm_backbone(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    return model(pixels)


def build_classes(preset: str) -> dict[str, dict[str, tuple[nn.Module, Outputs]]]:
    """Per class: each contender as (model, how to call it), all sharing one set of seeded encoder weights."""
    config = preset_configs([preset])[preset]
    config.out_features = ["stage1", "stage2", "stage3", "stage4"]
    torch.manual_seed(0)
    classifier = focalnet.FocalNetForImageClassification(config)
    encoder_weights = classifier.state_dict()
    classes: dict[str, dict[str, tuple[nn.Module, Outputs]]] = {
        "classification": {"ours": (classifier, _classification)},
        "backbone": {"ours": (focalnet.FocalNetBackbone(config), _backbone)},
        "bare model": {"ours": (focalnet.FocalNetModel(config), _bare)},
        "masked-image-modeling": {"ours": (focalnet.FocalNetForMaskedImageModeling(config), _masked_image_modeling)},
    }
    for name in ("backbone", "masked-image-modeling"):
        classes[name]["ours"][0].load_state_dict(encoder_weights, strict=False)
    classes["bare model"]["ours"][0].load_state_dict(
        {key.removeprefix("focalnet."): value for key, value in encoder_weights.items()}, strict=False
    )
    try:
        timm = timm_model(classifier, config)
    except ImportError as err:
        print(f"timm skipped: {err}")
    else:
        classes["classification"]["timm"] = (timm, _classification)
        classes["backbone"]["timm"] = (TimmIntermediates(timm), _timm_backbone)
    return classes


def max_difference(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(expected, got, strict=True))


def measure_class(
    contenders: dict[str, tuple[nn.Module, Outputs]], pixels: torch.Tensor, repeats: int, warmup: int
) -> dict[str, Any]:
    """img/s of each contender eager and compiled, and how far compiled outputs are from eager ones."""
    torch._dynamo.reset()
    steps, differences = {}, {}
    for name, (model, outputs) in contenders.items():
        model.eval()
        compiled = torch.compile(model)
        differences[name] = max_difference(outputs(model, pixels), outputs(compiled, pixels))
        steps[f"{name} eager"] = partial(outputs, model, pixels)
        steps[f"{name} compiled"] = partial(outputs, compiled, pixels)
    seconds = time_interleaved(steps, repeats, warmup, pixels.device)
    throughput = {name: [pixels.shape[0] / s for s in runs] for name, runs in seconds.items()}
    medians = {name: statistics.median(runs) for name, runs in throughput.items()}
    ratios = {"ours compiled / ours eager": medians["ours compiled"] / medians["ours eager"]}
    if "timm compiled" in medians:
        ratios["ours compiled / timm compiled"] = medians["ours compiled"] / medians["timm compiled"]
        ratios["ours eager / timm eager"] = medians["ours eager"] / medians["timm eager"]
    return {"img_s": throughput, "median_img_s": medians, "ratios": ratios, "compiled_vs_eager_max_abs": differences}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="focalnet-tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    machine = machine_info("cpu")
    print(format_machine(machine))
    pixels = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    results = {}
    with torch.inference_mode():
        for class_name, contenders in build_classes(args.preset).items():
            result = measure_class(contenders, pixels, args.repeats, args.warmup)
            results[class_name] = result
            print(f"\n== {args.preset} {class_name}, batch {args.batch_size}, fp32")
            for name, value in result["median_img_s"].items():
                print(f"   {name:16s} {value:7.2f} img/s")
            for name, value in result["ratios"].items():
                print(f"   {name:30s} {value:.3f}x")
            differences = ", ".join(f"{k} {v:.2g}" for k, v in result["compiled_vs_eager_max_abs"].items())
            print(f"   compiled vs eager max |diff|: {differences}")
    if args.json:
        report = {"machine": machine, "settings": vars(args) | {"json": str(args.json)}, "results": results}
        with atomic_write(args.json) as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
