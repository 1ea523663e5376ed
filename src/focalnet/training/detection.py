"""Object detection and instance segmentation as training tasks: COCO-layout data (or Hugging Face
datasets in the cppe-5 layout, or shards; `focalnet.training.sources`), torchvision's detectors on a
FocalNet FPN, COCO mAP from pycocotools' COCOeval (SPEC 10).

Training images are flipped, optionally cropped and resized to one of `scales` by the data
pipeline (the detector's own resize is switched off while training); validation images go in at
their size and the detector resizes them to `min_size`, mapping its boxes back.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..detection import data
from ..detection.evaluation import STAT_NAMES, CocoEvaluation, coco_evaluate, load_ground_truth, to_coco_results
from ..detection.models import build_detector, detector_config, from_pretrained, save_pretrained
from .config import TrainConfig
from .data import evaluation_loader, seeded, with_progress
from .distributed import Processes
from .evaluation import autocast
from .models import model_overrides
from .rows import Unreadable
from .sources import detection_sources
from .streaming import Stream, samples
from .task import Batch, Task, batch_inputs

LOGGED_STATS = {"bbox": ("map", "map_50", "map_75"), "segm": ("map", "map_50")}


class SeededSampler:
    """torchvision's positive/negative sampler (of anchors or proposals), drawing each image's sample
    from that image's seed: what an image trains on depends neither on its batch-mates nor on the
    number of processes, so runs resume exactly and 1 and N processes agree. Without seeds (outside
    the engine) it draws from the global RNG as torchvision's does."""

    def __init__(self, sampler: Any, salt: int) -> None:
        self.sampler = sampler
        self.salt = salt
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.seeds is None:
            return self.sampler(matched_idxs)
        positives, negatives = [], []
        for seed, matched in zip(self.seeds, matched_idxs, strict=True):
            (positive,), (negative,) = seeded(seed + self.salt, self.sampler, [matched.cpu()])
            positives.append(positive.to(matched.device))
            negatives.append(negative.to(matched.device))
        return positives, negatives


def seeded_samplers(model: nn.Module) -> list[SeededSampler]:
    """Put `SeededSampler`s in place of the R-CNN samplers of `model` (none in RetinaNet); return them."""
    samplers = []
    for salt, owner in enumerate((getattr(model, "rpn", None), getattr(model, "roi_heads", None))):
        if owner is not None:
            owner.fg_bg_sampler = SeededSampler(owner.fg_bg_sampler, salt)
            samplers.append(owner.fg_bg_sampler)
    return samplers


def validation_instances(source: data.CocoAnnotations | Stream) -> Path | dict[str, Any]:
    """What COCOeval scores against: the instances file of a COCO layout, else the records as COCO
    data (a stream's read from every shard, its unusable samples left out)."""
    if isinstance(source, Stream):
        records = [record for name, row in source.rows() for record in source.decode(row, name).images]
        usable = [record for record in records if not isinstance(record.loader, Unreadable)]
        return data.instances(data.CocoAnnotations(Path(source.name), usable, source.categories))
    return source.path if source.path.is_file() else data.instances(source)


def read_split(config: TrainConfig, split: str) -> data.CocoAnnotations:
    """The annotations of `split`: the explicit `<split>_annotations` + `<split>_images`, or `data`'s layout."""
    annotations, images = getattr(config, f"{split}_annotations"), getattr(config, f"{split}_images")
    if (annotations is None) != (images is None):
        raise ValueError(f"give both {split}_annotations and {split}_images, or neither (to use `data`)")
    if annotations is None:
        if config.data is None:
            raise ValueError(f"no {split} data: set `data` (a COCO-layout directory) or {split}_annotations/images")
        annotations, images = data.find_split(config.data, split)
    coco = data.read_annotations(annotations, images)
    data.report_missing(coco)
    return coco


def predict_coco(
    model: nn.Module,
    batches: Iterable[Batch],
    label_to_category: list[int],
    iou_types: tuple[str, ...],
    device: torch.device,
    amp: str = "none",
) -> tuple[list[dict], int]:
    """COCO results of `model` on every readable image of `batches`, and the number of unreadable ones.

    Each image goes through the detector alone, as torchvision's references evaluate: in a batch,
    images are zero-padded to the largest, which changes what the others' borders see. Results
    therefore depend neither on the batch size nor on the number of processes."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    skipped = 0
    with torch.no_grad():
        for images, targets, dropped in batches:
            skipped += dropped
            if not images:
                continue
            with autocast(device, amp):  # one image at a time: a batch would pad images to its largest
                outputs = [model([image])[0] for image in batch_inputs(images, device)]
            for output, target in zip(outputs, targets, strict=True):  # (to_coco_results moves them to fp32 CPU)
                results += to_coco_results(target["image_id"], output, label_to_category, iou_types)
    model.train(was_training)
    return results, skipped


def evaluation_metrics(stats: dict[str, float], iou_types: tuple[str, ...]) -> dict[str, float]:
    """The validation columns of metrics.jsonl (`val_bbox_map`, `val_bbox_map_50`, ...) from COCOeval's stats."""
    return {f"val_{iou}_{name}": stats[f"{iou}_{name}"] for iou in iou_types for name in LOGGED_STATS[iou]}


class DetectionTask(Task):
    """Boxes: Faster R-CNN (default), RetinaNet or Mask R-CNN, evaluated with COCO bbox mAP."""

    name = "detection"
    default_detector = "faster_rcnn"
    iou_types: tuple[str, ...] = ("bbox",)

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        super().__init__(config, processes)
        self.architecture = config.detector or self.default_detector
        self.with_masks = "segm" in self.iou_types
        if self.with_masks and self.architecture != "mask_rcnn":
            raise ValueError(f"instance segmentation needs detector mask_rcnn, not {self.architecture}")
        self.train_annotations, self.val_annotations = detection_sources(config)
        self.categories = self.train_annotations.categories
        if self.val_annotations.categories != self.categories:
            raise ValueError(f"the categories of {self.val_annotations.path} differ from the training data's")
        self.label_to_category = [0] + [int(category["id"]) for category in self.categories]
        self._ground_truth = None

    # -- model ---------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The detector for the data's categories, its backbone from `init_from`, `model` and `model_overrides`."""
        config = self.config
        model = build_detector(
            self.architecture,
            config.init_from or config.model,
            categories=self.categories,
            backbone_overrides=model_overrides(config),
            min_size=config.min_size,
            max_size=config.max_size,
            image_mean=list(config.mean),
            image_std=list(config.std),
            **config.detector_kwargs,
        )
        model.transform._skip_resize = True  # the training pipeline resizes (multi-scale); eval still resizes
        self.samplers = seeded_samplers(model)
        return model

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self) -> Dataset:
        config = self.config
        transform = data.train_transform(config.scales, config.max_size, config.hflip, config.random_crop)
        make = functools.partial(data.CocoDetection, transform=transform, with_masks=self.with_masks)
        return samples(self.train_annotations, make)

    def val_dataset(self) -> Dataset:
        return samples(self.val_annotations, functools.partial(data.CocoDetection, transform=data.eval_transform()))

    def collate(self, samples: list[Any]) -> Batch:
        return data.collate_detection(samples)

    def placeholder_batch(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        size = int(min(self.config.scales))
        target: dict[str, Any] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "seed": 0}
        if self.with_masks:
            target["masks"] = torch.zeros(0, size, size, dtype=torch.uint8)
        return [torch.zeros(3, size, size)], [target]

    # -- steps ---------------------------------------------------------------------------------
    def training_loss(
        self, network: nn.Module, inputs: list[torch.Tensor], targets: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """torchvision's loss dict, summed; its terms are reported as `loss_*` columns."""
        for sampler in self.samplers:
            sampler.seeds = [target["seed"] for target in targets]
        losses = network(inputs, targets)
        terms = {name if name.startswith("loss_") else f"loss_{name}": loss.detach() for name, loss in losses.items()}
        return sum(value.float() for value in losses.values()), terms

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """COCO mAP over the whole validation set: detections gathered from every process, COCOeval on
        the main one, the numbers shared back."""
        config, processes = self.config, self.processes
        results, skipped = predict_coco(
            model, batches, self.label_to_category, self.iou_types, processes.device, config.amp
        )
        gathered = [result for part in processes.gather(results) for result in part]
        names = [f"{iou}_{name}" for iou in self.iou_types for name in STAT_NAMES]
        values = [0.0] * len(names)
        if processes.is_main:
            evaluation = coco_evaluate(self.ground_truth(), gathered, self.iou_types)
            values = [evaluation.stats[name] for name in names]
        values = processes.sum(values)
        stats = dict(zip(names, values, strict=True))
        skipped = processes.sum([skipped])[0]
        return {**evaluation_metrics(stats, self.iou_types), "skipped": int(skipped)}

    def ground_truth(self):
        """pycocotools' COCO object of the validation annotations (read once): the instances file, or the
        records of data without one (Hugging Face rows, shards: read through once)."""
        if self._ground_truth is None:
            self._ground_truth = load_ground_truth(validation_instances(self.val_annotations))
        return self._ground_truth

    # -- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"categories": self.categories, "detector": self.architecture}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("categories") != self.categories or state.get("detector") != self.architecture:
            raise ValueError(f"{path} trained a {state.get('detector')} on other categories than this run's data")

    def describe(self, row: dict[str, Any]) -> str:
        return "  ".join(f"{key.removeprefix('val_').replace('_', ' ')} {value:.4f}" for key, value in row.items())

    def save_model(self, model: nn.Module, directory: Path) -> None:
        save_pretrained(model, directory)


class InstanceSegmentationTask(DetectionTask):
    """Boxes and masks: Mask R-CNN, evaluated with COCO bbox and segm mAP."""

    name = "instance-segmentation"
    default_detector = "mask_rcnn"
    iou_types = ("bbox", "segm")


# ------------------------------------------------------------------------------------------------
def data_categories(
    trained: list[dict[str, Any]], found: list[dict[str, Any]], model: str, where: str | os.PathLike
) -> list[int]:
    """The data's category id of each of the model's labels (0 for the background), matched by name:
    the same data as a COCO file and as a Hugging Face dataset numbers its categories differently."""
    ids = {str(category["name"]): int(category["id"]) for category in found}
    names = [str(category["name"]) for category in trained]
    if sorted(names) != sorted(ids):
        raise ValueError(f"{model} was trained on the categories {names}; {where} has {list(ids)}")
    return [0] + [ids[name] for name in names]


def evaluate_detector(
    source: str | os.PathLike,
    annotations: data.CocoAnnotations | Stream,
    iou_types: tuple[str, ...] = ("bbox",),
    batch_size: int = 8,
    device: str = "cpu",
    amp: str = "none",
    workers: int = 0,
    progress: Callable[[Iterable, str, int | None], Iterable] | None = None,
) -> tuple[CocoEvaluation, list[dict], int]:
    """`focalnet evaluate` for a saved detector on annotated images (a COCO layout's, or a Hugging Face
    dataset's or shards' as the engine reads them): (COCOeval's numbers, the COCO results, unreadable images)."""
    model = from_pretrained(source, device=device)
    where = annotations.path if isinstance(annotations, data.CocoAnnotations) else annotations.name
    label_to_category = data_categories(detector_config(model).categories, annotations.categories, f"{source}", where)
    dataset = samples(annotations, functools.partial(data.CocoDetection, transform=data.eval_transform()))
    loader = evaluation_loader(dataset, batch_size, workers, collate_fn=data.collate_detection)
    results, skipped = predict_coco(
        model, with_progress(loader, progress), label_to_category, iou_types, torch.device(device), amp
    )
    ground_truth = load_ground_truth(validation_instances(annotations))
    return coco_evaluate(ground_truth, results, iou_types), results, skipped
