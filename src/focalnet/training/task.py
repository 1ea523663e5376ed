"""What a kind of training brings to the engine (`Trainer`): model, data, loss, metrics, export.

The engine owns everything that is the same for every task: the optimiser and its schedule,
accumulation, AMP, EMA, clipping, checkpoints and exact resume, torchrun, metrics.jsonl, curves
and progress bars. A task owns what differs. Batches travel as `(inputs, targets, skipped)`:
`inputs` a tensor or a list of tensors (one entry per sample), `targets` whatever the task's
loss reads (class indices, masks, or per-image dicts of boxes), `skipped` the unreadable
samples dropped from the batch. Models need not be FocalNet models: a task may train any
`nn.Module` whose parameters the optimiser can group.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import TrainConfig
from .distributed import Processes

Batch = tuple[Any, Any, int]


class Task:
    """The interface; `ClassificationTask`, `MaskedImageModelingTask` and `DetectionTask` are worked examples."""

    name: ClassVar[str]

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        self.config = config
        self.processes = processes

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self) -> Dataset:
        """Samples addressed by (index, seed); None for an unreadable one."""
        raise NotImplementedError

    def val_dataset(self) -> Dataset:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Batch:
        raise NotImplementedError

    def placeholder_batch(self) -> tuple[Any, Any]:
        """Inputs and targets standing in for a micro-batch without one readable sample: it still runs
        forward and backward (with weight 0), so every process takes part in each gradient reduction."""
        raise NotImplementedError

    # -- model ---------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    # -- steps ---------------------------------------------------------------------------------
    def training_loss(self, network: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss to minimise for one micro-batch, and named terms to report (tensors or floats)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Validation metrics, summed over processes, named as metrics.jsonl shows them (`val_*`),
        plus `skipped` (unreadable samples)."""
        raise NotImplementedError

    # -- run bookkeeping -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint records so a resume can check it continues the same task and data."""
        return {}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        """Raise ValueError when a checkpoint's task state does not fit this run."""

    def after_epoch(self, model: nn.Module, epoch: int, output_dir: Path) -> None:
        """Per-epoch outputs beyond the metrics (runs on the main process, after validation)."""

    def describe(self, row: dict[str, Any]) -> str:
        """The validation part of the one-line epoch summary."""
        return "  ".join(f"{key.removeprefix('val_')} {value:.4f}" for key, value in row.items())

    def save_model(self, model: nn.Module, directory: Path) -> None:
        raise NotImplementedError


def batch_inputs(inputs: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch's inputs on `device`; a tensor of images also in channels-last memory when asked."""
    inputs = move_to(inputs, device)
    if channels_last and isinstance(inputs, torch.Tensor):
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def move_to(value: Any, device: torch.device) -> Any:
    """Tensors (alone, or in lists, tuples and dicts) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(move_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


def task_named(name: str) -> type[Task]:
    """The built-in task class called `name` (`TrainConfig.task`)."""
    from .classification import ClassificationTask
    from .detection import DetectionTask, InstanceSegmentationTask
    from .masked_image_modeling import MaskedImageModelingTask
    from .segmentation import SemanticSegmentationTask

    builtin = (
        ClassificationTask,
        MaskedImageModelingTask,
        DetectionTask,
        InstanceSegmentationTask,
        SemanticSegmentationTask,
    )
    tasks: dict[str, type[Task]] = {task.name: task for task in builtin}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(tasks)}")
    return tasks[name]
