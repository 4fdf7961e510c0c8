"""Classification metrics for long-tailed evaluation (scikit-learn's where they fit)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

GROUPS = ("head", "medium", "tail")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per class from a confusion matrix; a class absent from y_true gets NaN."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """balanced accuracy (mean per-class recall over present classes), accuracy, macro F1,
    per-class recall, group recall, confusion matrix and per-class one-vs-rest AUC."""
    y_true = np.asarray(y_true, dtype=np.int64)
    num_classes = probs.shape[1]
    y_pred = probs.argmax(1)
    labels = np.arange(num_classes)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    out: dict[str, Any] = {
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else float("nan"),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels[present], average="macro", zero_division=0)
        ),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": cm.tolist(),
        "per_class_auc": per_class_auc(y_true, probs),
    }
    if groups is not None:
        out["group_recall"] = {
            g: _nanmean([recall[c] for c in range(num_classes) if groups[c] == g]) for g in GROUPS
        }
    return out


def per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC per class (None where a class is absent or alone)."""
    aucs: list[float | None] = []
    for c in range(probs.shape[1]):
        pos = y_true == c
        if pos.all() or not pos.any():
            aucs.append(None)
        else:
            aucs.append(float(roc_auc_score(pos, probs[:, c])))
    return aucs


def _nanmean(values: list[float]) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None
