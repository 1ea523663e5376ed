"""Semantic segmentation as a training task: ADE20K-layout data, UperNet on FocalNet, mIoU over the
whole validation set (SPEC 10).

Training crops are `image_size` squares of randomly rescaled images (`base_size` x `scale_range`),
padded with the ignore label; validation images are rescaled to fit `base_size`, predicted whole,
and the logits resized back to the label map's size, one image at a time (as mmsegmentation).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..segmentation import data
from ..segmentation.inference import SegmentationPreprocessing, predict_logits
from ..segmentation.metrics import SegmentationMetrics
from ..segmentation.modeling import UperNetForSemanticSegmentation, is_upernet_directory
from .config import TrainConfig
from .data import evaluation_loader, with_progress
from .distributed import Processes
from .evaluation import autocast
from .models import model_overrides
from .sources import segmentation_sources
from .streaming import samples
from .task import Batch, Task, batch_inputs

MIN_LOCAL_BATCH = 2
"""The pyramid pooling's 1x1 map has one value per channel and image: BatchNorm needs two images."""


def preprocessing(config: TrainConfig) -> SegmentationPreprocessing:
    """The evaluation transform a run saves with its model."""
    scale = (int(config.base_size[0]), int(config.base_size[1]))
    return SegmentationPreprocessing(tuple(config.mean), tuple(config.std), scale, config.reduce_labels)


class SegmentationTotals(NamedTuple):
    """What validation sums over images (and over processes, field by field)."""

    metrics: SegmentationMetrics
    loss_sum: float
    """Summed cross-entropy of the labelled pixels."""
    pixels: float
    """Labelled (not ignored) pixels."""
    images: int
    skipped: int
    """Unreadable images, and images without a usable label map."""


def evaluate_segmentation(
    model: nn.Module,
    batches: Iterable[Batch],
    num_labels: int,
    device: torch.device,
    amp: str = "none",
    window: int | None = None,
    stride: int | None = None,
) -> SegmentationTotals:
    """Whole-set sums on this process.

    Each image goes through the model alone (whole, or in `window` tiles) and its logits are resized
    to its label map, so results depend neither on the batch size nor on the number of processes."""
    metrics = SegmentationMetrics(num_labels, data.IGNORE_INDEX)
    loss_sum, pixels, evaluated, skipped = 0.0, 0.0, 0, 0
    was_training = model.training
    model.eval()
    for images, labels, dropped in batches:
        skipped += dropped
        for image, label in zip(batch_inputs(images, device), batch_inputs(labels, device), strict=True):
            with autocast(device, amp):
                logits = predict_logits(model, image[None], tuple(label.shape), window, stride)
            target = label[None]
            loss_sum += F.cross_entropy(logits, target, ignore_index=data.IGNORE_INDEX, reduction="sum").item()
            pixels += (target != data.IGNORE_INDEX).sum().item()
            metrics.update(logits.argmax(dim=1), target)
            evaluated += 1
    model.train(was_training)
    return SegmentationTotals(metrics, loss_sum, pixels, evaluated, skipped)


def segmentation_row(totals: SegmentationTotals) -> dict[str, float]:
    """The validation columns of metrics.jsonl."""
    result = totals.metrics.compute()
    return {
        "val_loss": totals.loss_sum / max(totals.pixels, 1.0),
        "val_miou": result["miou"],
        "val_pixel_accuracy": result["pixel_accuracy"],
        "val_mean_accuracy": result["mean_accuracy"],
    }


class SemanticSegmentationTask(Task):
    """A class per pixel: UperNet on a FocalNet backbone, scored by whole-set mIoU."""

    name = "semantic-segmentation"

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        super().__init__(config, processes)
        if config.data is None:
            raise ValueError(
                "semantic segmentation needs `data`: an ADE20K-layout directory, a Hugging Face dataset or shards "
                "(see TrainConfig.data)"
            )
        local_batch = config.batch_size // (processes.world * config.accum_steps)
        if local_batch < MIN_LOCAL_BATCH:
            raise ValueError(
                f"each process trains on {local_batch} image(s) per micro-batch; UperNet's BatchNorm after the "
                f"1x1 pyramid pooling needs >= {MIN_LOCAL_BATCH}: raise batch_size or lower accum_steps"
            )
        self.train_split, self.val_split, self.class_names = segmentation_sources(config)

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    # -- model ---------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """UperNet with the data's classes: all of a saved UperNet given as `init_from` (new classifiers if
        its classes differ), else a backbone from `init_from` / `model` with `model_overrides`, and fresh heads."""
        config = self.config
        id2label = dict(enumerate(self.class_names))
        source = config.init_from or config.model
        if is_upernet_directory(source):
            saved = UperNetForSemanticSegmentation.from_pretrained(source)
            relabel = {} if saved.config.id2label == id2label else {"id2label": id2label}
            model = UperNetForSemanticSegmentation.from_pretrained(source, **relabel, **config.head_overrides)
        else:
            model = UperNetForSemanticSegmentation.from_backbone(
                source, id2label=id2label, backbone_overrides=model_overrides(config), **config.head_overrides
            )
        if self.processes.world > 1 and self.processes.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # mmsegmentation's SyncBN
        return model.train()

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self) -> Dataset:
        config = self.config
        transform = data.train_transform(
            config.image_size,
            [int(side) for side in config.base_size],
            config.scale_range,
            config.cat_max_ratio,
            config.hflip,
            config.photometric_distortion,
            config.mean,
            config.std,
        )
        return samples(self.train_split, self._dataset(transform))

    def val_dataset(self) -> Dataset:
        return samples(self.val_split, self._dataset(data.eval_transform(preprocessing(self.config))))

    def _dataset(self, transform: Callable) -> Callable[[Any], Dataset]:
        """The dataset class for a split (or one streamed sample) with this run's classes and transform."""
        return functools.partial(
            data.SegmentationDataset,
            num_labels=self.num_labels,
            transform=transform,
            reduce_labels=self.config.reduce_labels,
        )

    def collate(self, samples: list[Any]) -> Batch:
        return data.collate_segmentation(samples)

    def placeholder_batch(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        size = self.config.image_size
        return [torch.zeros(3, size, size)] * MIN_LOCAL_BATCH, [torch.zeros(size, size, dtype=torch.long)] * 2

    # -- steps ---------------------------------------------------------------------------------
    def training_loss(
        self, network: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        pixels = torch.stack(inputs)
        if self.config.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return network(pixel_values=pixels, labels=torch.stack(targets)).loss, {}

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Whole-set mIoU: intersections, unions and areas summed over every process's images."""
        processes = self.processes
        totals = evaluate_segmentation(model, batches, self.num_labels, processes.device, self.config.amp)
        totals.metrics.totals = processes.sum_tensor(totals.metrics.totals)
        loss_sum, pixels, images, skipped = processes.sum(
            [totals.loss_sum, totals.pixels, totals.images, totals.skipped]
        )
        totals = SegmentationTotals(totals.metrics, loss_sum, pixels, int(images), int(skipped))
        return {**segmentation_row(totals), "skipped": totals.skipped}

    # -- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"classes": self.class_names}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("classes") != self.class_names:
            raise ValueError(
                f"{path} trained on the classes {state.get('classes')}, this run's data has {self.class_names}"
            )

    def save_model(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        preprocessing(self.config).save(directory)


# ------------------------------------------------------------------------------------------------
def evaluate_segmenter(
    source: str | os.PathLike,
    labelled: Any,
    batch_size: int = 8,
    device: str = "cpu",
    amp: str = "none",
    workers: int = 0,
    window: int | None = None,
    stride: int | None = None,
    progress: Callable[[Iterable, str, int | None], Iterable] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """`focalnet evaluate` for a saved UperNet on `labelled` images (an ADE20K-layout split, or a Hugging
    Face dataset's or shards' pairs as the engine reads them): (metrics with per-class IoU and accuracy,
    and the class names)."""
    model = UperNetForSemanticSegmentation.from_pretrained(source).to(device)
    processing = SegmentationPreprocessing.load(source)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    make = functools.partial(
        data.SegmentationDataset,
        num_labels=len(names),
        transform=data.eval_transform(processing),
        reduce_labels=processing.do_reduce_labels,
    )
    loader = evaluation_loader(samples(labelled, make), batch_size, workers, collate_fn=data.collate_segmentation)
    totals = evaluate_segmentation(
        model, with_progress(loader, progress), len(names), torch.device(device), amp, window, stride
    )
    per_class = totals.metrics.compute()
    report = {
        **{key.removeprefix("val_"): value for key, value in segmentation_row(totals).items()},
        "per_class_iou": dict(zip(names, per_class["per_class_iou"], strict=True)),
        "per_class_accuracy": dict(zip(names, per_class["per_class_accuracy"], strict=True)),
        "images": totals.images,
        "skipped_images": totals.skipped,
    }
    return report, names
