"""Image classification as a training task: labelled folders, lists, digits, Hugging Face datasets or
shards (`focalnet.training.sources`); cross-entropy with
label smoothing and MixUp/CutMix; top-1/top-5 validation; an HF-layout classifier as the result."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..modeling import FocalNetForImageClassification
from .config import TrainConfig
from .data import ImageDataset, collate, eval_processor, train_transform
from .distributed import Processes
from .evaluation import evaluate
from .models import build_focalnet
from .sources import labelled_sources
from .streaming import samples
from .task import Batch, Task


def freeze(model: FocalNetForImageClassification, config: TrainConfig) -> None:
    """Stop gradients to the backbone (`freeze_backbone`) or to the stem and first N stages."""
    if config.freeze_stages > model.config.num_stages:
        raise ValueError(f"freeze_stages={config.freeze_stages} but the model has {model.config.num_stages} stages")
    frozen: list[nn.Module] = []
    if config.freeze_backbone:
        frozen.append(model.focalnet)
    elif config.freeze_stages:
        frozen += [model.focalnet.embeddings, *model.focalnet.encoder.stages[: config.freeze_stages]]
    for module in frozen:
        module.requires_grad_(False)


class ClassificationTask(Task):
    name = "classification"

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        super().__init__(config, processes)
        self.train_source, self.val_source = labelled_sources(config)
        self.classes = self.train_source.classes
        self.processor = eval_processor(config)
        self.mix = self._batch_mixing()

    def _batch_mixing(self):
        """MixUp and/or CutMix on whole batches (torchvision v2), or None."""
        if not (self.config.mixup or self.config.cutmix):
            return None
        from torchvision.transforms import v2

        choices = []
        if self.config.mixup:
            choices.append(v2.MixUp(alpha=self.config.mixup, num_classes=len(self.classes)))
        if self.config.cutmix:
            choices.append(v2.CutMix(alpha=self.config.cutmix, num_classes=len(self.classes)))
        return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self) -> Dataset:
        return samples(self.train_source, functools.partial(ImageDataset, transform=train_transform(self.config)))

    def val_dataset(self) -> Dataset:
        return samples(self.val_source, functools.partial(ImageDataset, transform=self.processor.transform))

    def collate(self, samples: list[Any]) -> Batch:
        return collate(samples)

    def placeholder_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        return torch.zeros(1, len(self.config.mean), size, size), torch.zeros(1, dtype=torch.long)

    # -- model and steps -----------------------------------------------------------------------
    def build_model(self) -> FocalNetForImageClassification:
        """A classifier for the data's classes: from `init_from` (new head when the classes differ) or a preset."""
        labels = {"num_labels": len(self.classes), "id2label": dict(enumerate(self.classes))}
        model = build_focalnet(FocalNetForImageClassification, self.config, labels)
        freeze(model, self.config)
        return model

    def training_loss(
        self, network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.mix is not None and len(inputs) > 1:
            inputs, targets = self.mix(inputs, targets)
        logits = network(inputs).logits
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
        return loss, {}

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        config = self.config
        result = evaluate(model, batches, len(self.classes), self.processes, config.amp, config.channels_last)
        return {"val_loss": result.loss, "val_acc1": result.acc1, "val_acc5": result.acc5, "skipped": result.skipped}

    # -- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("classes") != self.classes:
            raise ValueError(f"{path} was trained on classes {state.get('classes', [])[:10]}..., the data has others")

    def describe(self, row: dict[str, Any]) -> str:
        return f"val loss {row['val_loss']:.4f}  val top-1 {row['val_acc1']:.2f}%  top-5 {row['val_acc5']:.2f}%"

    def save_model(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
