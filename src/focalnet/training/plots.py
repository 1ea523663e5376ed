"""PNG figures of a run: loss/accuracy curves and the confusion matrix (matplotlib, the `train` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .._io import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'focalnet[train]'") from error
    return plt


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_curves(history: Sequence[dict], path: str | Path) -> None:
    """Train/val loss and val top-1/top-5 accuracy per epoch, side by side."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axes.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axes.legend()
    acc_axes.plot(epochs, [row["val_acc1"] for row in history], marker="o", label="val top-1")
    acc_axes.plot(epochs, [row["val_acc5"] for row in history], marker="o", label="val top-5")
    acc_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    acc_axes.legend()
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)


def plot_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (true class down, predicted across); labels shown up to 50 classes."""
    plt = _pyplot()
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(4 + 0.35 * len(class_names), 20)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    if len(class_names) <= 50:
        ticks = range(len(class_names))
        axes.set_xticks(ticks, class_names, rotation=90)
        axes.set_yticks(ticks, class_names)
        if len(class_names) <= 20:
            for (row, col), value in zip(
                torch.cartesian_prod(*(torch.arange(len(class_names)),) * 2).tolist(),
                counts.flatten().tolist(),
                strict=True,
            ):
                if value:
                    color = "white" if rates[row, col] > 0.5 else "black"
                    axes.text(col, row, int(value), ha="center", va="center", color=color, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    _save(figure, path)
    plt.close(figure)
