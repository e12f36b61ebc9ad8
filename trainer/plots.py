"""The two figures exported with a model: its confusion matrix and its training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    """Counts with row-normalised colour, so each true class reads as its own distribution."""
    cm = np.asarray(cm)
    rates = cm / np.maximum(1, cm.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    n = len(class_names)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch (train on augmented batches, validation clean) and the learning rate."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    marker = "o" if len(epochs) < 15 else None  # a line needs two points; show short runs as dots
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, history.get(key, []), marker=marker, label=f"train (augmented) {label}")
        ax.plot(epochs, history.get(f"val_{key}", []), marker=marker, label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if history.get("val_accuracy"):
        best = int(np.argmax(history["val_accuracy"]))
        axes[1].axvline(best + 1, color="grey", ls=":", label="best validation")
        axes[1].set_ylim(max(0.0, min(history["val_accuracy"][len(epochs) // 4:] or [0.0]) - 0.02), 1.0)
    axes[2].plot(epochs, history.get("lr", []), marker=marker)
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
