"""Semantic segmentation metrics as mmsegmentation reports them: intersection and union summed per
class over the whole evaluation set (not averaged per image), then mIoU, pixel accuracy and mean
class accuracy. Pixels labelled with the ignore index count nowhere, not even in prediction areas."""

from __future__ import annotations

from typing import Any

import torch

_ROWS = ("intersection", "union", "predicted area", "label area")


class SegmentationMetrics:
    """Whole-set intersection/union sums per class, accumulated image by image or batch by batch.

    `totals` is a float64 CPU tensor of shape (4, num_labels) with rows intersection, union,
    predicted area and label area. Sums are additive, so under data parallelism each process
    accumulates its own share and the totals are combined before `compute`:

        metrics.totals = processes.sum_tensor(metrics.totals)
    """

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reset()

    @property
    def totals(self) -> torch.Tensor:
        return self._totals

    @totals.setter
    def totals(self, totals: torch.Tensor) -> None:
        # assigning sums over processes (or any other set of totals) replaces the accumulated ones
        if tuple(totals.shape) != (len(_ROWS), self.num_labels):
            raise ValueError(f"totals must have shape {(len(_ROWS), self.num_labels)}, got {tuple(totals.shape)}")
        self._totals = totals.detach().to("cpu", torch.float64).clone()

    def reset(self) -> None:
        self._totals = torch.zeros(len(_ROWS), self.num_labels, dtype=torch.float64)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add integer class maps of equal shape, (H, W) or (N, H, W) or any other, on any device."""
        if predictions.shape != labels.shape:
            raise ValueError(
                f"predictions and labels differ in shape: {tuple(predictions.shape)} vs {tuple(labels.shape)}"
            )
        if predictions.is_floating_point() or labels.is_floating_point():
            raise TypeError(f"expected integer class maps, got {predictions.dtype} and {labels.dtype}")
        labels = labels.reshape(-1)
        valid = labels != self.ignore_index
        labels = labels[valid].long()
        predictions = predictions.reshape(-1)[valid].long()
        self._check_range(labels, "labels")
        self._check_range(predictions, "predictions")
        n = self.num_labels
        intersection = torch.bincount(labels[predictions == labels], minlength=n)
        predicted = torch.bincount(predictions, minlength=n)
        labelled = torch.bincount(labels, minlength=n)
        union = predicted + labelled - intersection
        self._totals += torch.stack([intersection, union, predicted, labelled]).cpu().double()

    def _check_range(self, values: torch.Tensor, what: str) -> None:
        bad = values[(values < 0) | (values >= self.num_labels)]
        if bad.numel():
            shown = bad.unique()[:10].tolist()
            raise ValueError(
                f"{what} contain values {shown} outside [0, {self.num_labels}) "
                f"that are not the ignore index {self.ignore_index}"
            )

    def compute(self) -> dict[str, Any]:
        """mIoU over classes present in predictions or labels, pixel accuracy, and mean accuracy over
        classes present in labels; nan where nothing was counted, None for classes left out."""
        intersection, union, _, labelled = self._totals
        iou = [float(i / u) if u > 0 else None for i, u in zip(intersection, union, strict=True)]
        accuracy = [float(i / t) if t > 0 else None for i, t in zip(intersection, labelled, strict=True)]
        total = float(labelled.sum())
        return {
            "miou": _mean(iou),
            "pixel_accuracy": float(intersection.sum()) / total if total > 0 else float("nan"),
            "mean_accuracy": _mean(accuracy),
            "per_class_iou": iou,
            "per_class_accuracy": accuracy,
        }


def _mean(values: list[float | None]) -> float:
    counted = [v for v in values if v is not None]
    return sum(counted) / len(counted) if counted else float("nan")


def format_class_table(
    names: list[str],
    per_class_iou: list[float | None],
    per_class_accuracy: list[float | None],
    limit: int | None = None,
) -> str:
    """Plain-text table of per-class IoU and accuracy in percent, in label order; "-" marks a class
    left out. With `limit`, only the first `limit` rows and a line counting the rest."""
    if not len(names) == len(per_class_iou) == len(per_class_accuracy):
        raise ValueError(f"{len(names)} names for {len(per_class_iou)} IoUs and {len(per_class_accuracy)} accuracies")
    shown = len(names) if limit is None else max(0, min(limit, len(names)))
    width = max([len("class"), *(len(name) for name in names[:shown])])

    def cell(value: float | None) -> str:
        return f"{'-' if value is None else f'{100 * value:.2f}':>7}"

    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'Acc %':>7}"]
    lines += [
        f"{name:<{width}}  {cell(iou)}  {cell(acc)}"
        for name, iou, acc in zip(names[:shown], per_class_iou[:shown], per_class_accuracy[:shown], strict=True)
    ]
    if shown < len(names):
        lines.append(f"... {len(names) - shown} more")
    return "\n".join(lines)
