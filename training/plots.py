"""Pictures of a run: training curves and the confusion matrix (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: dict[str, list[float]], path: Path, title: str, best_epoch: int | None = None) -> None:
    """Accuracy and loss per epoch, training against validation, the best epoch marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = range(1, len(history.get("loss", [])) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        if metric in history:
            ax.plot(epochs, history[metric], "o-", markersize=3, label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "s-", markersize=3, label=f"validation {metric}")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    k = len(classes)
    size = min(2 + 0.6 * k, 12)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    ax.imshow(confusion, cmap="Blues")
    peak = max(max(row) for row in confusion) or 1
    for i in range(k):
        for j in range(k):
            value = confusion[i][j]
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
