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
    """The losses per epoch (train, val when the task has one, and the task's training loss terms
    `loss_*`), and beside them every other validation metric of the rows (`val_*`: top-1/top-5
    accuracy for classification, nothing more for masked image modeling)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    losses = [key for key in history[0] if key in ("train_loss", "val_loss") or key.startswith("loss_")]
    metrics = [key for key in history[0] if key.startswith("val_") and key != "val_loss"]
    figure, panels = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 4), squeeze=False)
    loss_axes = panels[0][0]
    for key in losses:
        loss_axes.plot(epochs, [row[key] for row in history], marker="o", label=key.removesuffix("_loss"))
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    if metrics:
        metric_axes = panels[0][1]
        for key in metrics:
            metric_axes.plot(epochs, [row[key] for row in history], marker="o", label=key.removeprefix("val_"))
        metric_axes.set(xlabel="epoch", title="validation metrics")
    from matplotlib.ticker import MaxNLocator

    for axes in panels[0]:
        axes.legend()
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
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
