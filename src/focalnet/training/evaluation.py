"""Top-1/top-5 accuracy, loss, per-class accuracy and the confusion matrix, reduced over processes."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Processes
from .task import batch_inputs


@dataclass
class Evaluation:
    loss: float
    acc1: float
    acc5: float
    count: int
    skipped: int
    confusion: torch.Tensor
    """confusion[true, predicted] counts, summed over all processes."""

    @property
    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class (None for a class with no images)."""
        totals = self.confusion.sum(dim=1)
        hits = self.confusion.diagonal()
        return [None if int(t) == 0 else float(h / t) for h, t in zip(hits, totals, strict=True)]

    def summary(self) -> dict[str, float | int]:
        return {"loss": self.loss, "acc1": self.acc1, "acc5": self.acc5, "images": self.count, "skipped": self.skipped}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (`amp` none, bf16 or fp16)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]],
    num_classes: int,
    processes: Processes,
    amp: str = "none",
    channels_last: bool = False,
    label_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Evaluation:
    """Run `model` over (images, labels, skipped) batches; every number is summed across ranks."""
    was_training = model.training
    model.eval()
    device = processes.device
    loss_sum = hits1 = hits5 = count = skipped = 0.0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for images, labels, dropped in batches:
        skipped += dropped
        if len(labels) == 0:
            continue
        if label_map is not None:
            labels = label_map(labels)
        images = batch_inputs(images, device, channels_last)
        labels = labels.to(device)
        with autocast(device, amp):
            logits = model(images).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=-1).indices
        hits1 += (top[:, 0] == labels).sum().item()
        hits5 += (top == labels[:, None]).any(dim=-1).sum().item()
        count += len(labels)
        confusion.index_put_(
            (labels.cpu(), top[:, 0].cpu()), torch.ones(len(labels), dtype=torch.float64), accumulate=True
        )
    model.train(was_training)
    loss_sum, hits1, hits5, count, skipped = processes.sum([loss_sum, hits1, hits5, count, skipped])
    confusion = processes.sum_tensor(confusion)
    denominator = max(count, 1)
    return Evaluation(
        loss=loss_sum / denominator,
        acc1=100 * hits1 / denominator,
        acc5=100 * hits5 / denominator,
        count=int(count),
        skipped=int(skipped),
        confusion=confusion.long(),
    )


def label_mapping(data_classes: list[str], model_labels: dict[int, str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Data label index -> model output index: by class name when every name is among the model's
    labels, else by position when the counts agree and no name is shared (a partial match is
    ambiguous); anything else is an error."""
    by_name = {name: index for index, name in model_labels.items()}
    shared = [name for name in data_classes if name in by_name]
    if len(shared) == len(data_classes):
        table = torch.tensor([by_name[name] for name in data_classes])
        return lambda labels: table[labels]
    if not shared and len(data_classes) == len(model_labels):
        return lambda labels: labels
    raise ValueError(
        f"the data's {len(data_classes)} classes ({data_classes[:5]}...) do not map onto the model's "
        f"{len(model_labels)} labels: {len(shared)} names are shared; name the class folders as the labels"
    )


def evaluate_checkpoint(
    model_source: str,
    data: str | None = None,
    list_file: str | None = None,
    split: str = "val",
    batch_size: int = 64,
    device: str = "cpu",
    amp: str = "none",
    workers: int = 0,
    progress: Callable | None = None,
    source: Any = None,
) -> tuple[Evaluation, list[str]]:
    """Evaluate any classification checkpoint on a folder (`data`, or `data/<split>`), a list
    file, "digits", or a labelled `source` of `focalnet.training.sources` (a Hugging Face dataset,
    shards); returns the evaluation and the model's label names, in its order."""
    from ..modeling import FocalNetForImageClassification
    from ..predict import processor_for
    from .data import ImageDataset, evaluation_loader, with_progress
    from .streaming import samples

    if source is None:
        source = _local_images(data, list_file, split)
    model = FocalNetForImageClassification.from_pretrained(model_source).to(device).eval()
    processor = processor_for(model_source, model.config.image_size_2d[0])
    mapping = label_mapping(source.classes, model.config.id2label)
    dataset = samples(source, functools.partial(ImageDataset, transform=processor.transform))
    batches = with_progress(evaluation_loader(dataset, batch_size, workers), progress)
    processes = Processes(0, 1, torch.device(device))
    result = evaluate(model, batches, model.config.num_labels, processes, amp, label_map=mapping)
    return result, [model.config.id2label[i] for i in range(model.config.num_labels)]


def _local_images(data: str | None, list_file: str | None, split: str) -> Any:
    """Labelled images from a list file, the digits' `split`, or a class folder (its `split` sub-folder if any)."""
    from pathlib import Path

    from .data import digits, image_folder, image_list

    if list_file is not None:
        return image_list(list_file)
    if data == "digits":
        return digits(split)
    if data is not None:
        root = Path(data)
        return image_folder(root / split if (root / split).is_dir() else root)
    raise ValueError("give the data to evaluate on: a folder, 'digits', a list file, a Hugging Face dataset or shards")
