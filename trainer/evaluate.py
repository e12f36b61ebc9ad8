"""Classification metrics from predicted probabilities: accuracy, per-class precision/recall, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 / support and the confusion matrix, JSON-ready."""
    if probs.ndim != 2 or probs.shape[1] != len(class_names) or len(probs) != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} do not fit {len(labels)} labels and "
                         f"{len(class_names)} classes")
    predicted = probs.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, len(class_names))
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = {
        name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
               "f1": round(float(f1[i]), 4), "support": int(cm[i].sum())}
        for i, name in enumerate(class_names)
    }
    return {"accuracy": float(tp.sum() / max(1, len(labels))), "count": len(labels), "per_class": per_class,
            "confusion_matrix": cm.tolist()}
