"""Classification metrics for long-tailed and medical evaluation (scikit-learn's where they fit).

Every metric of a report comes from one probability matrix: the one the prediction uses (after
post-hoc logit adjustment, when the run asks for it), so AUC, calibration and recall describe
the same classifier. Undefined values are `None`, never NaN, so results.json stays valid JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

GROUPS = ("head", "medium", "tail")
N_BINS = 15  # calibration bins: torchmetrics' and Guo et al.'s (2017) default


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per class from a confusion matrix; a class absent from y_true gets NaN."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: list[str] | None = None,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """The metrics of one report on one split.

    balanced accuracy (mean per-class recall over present classes), accuracy, macro F1,
    per-class recall, group recall, confusion matrix; one-vs-rest AUC per class and macro;
    per-class sensitivity and specificity; expected calibration error with its reliability
    bins; whether the split is class-balanced; and `notes`, sentences that explain values a
    reader could misread (accuracy equal to balanced accuracy, classes left out of macro AUC).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)
    num_classes = probs.shape[1]
    y_pred = probs.argmax(1)
    labels = np.arange(num_classes)
    empty = len(y_true) == 0  # scikit-learn refuses empty input; nothing is defined there
    cm = (
        np.zeros((num_classes, num_classes), np.int64)
        if empty
        else confusion_matrix(y_true, y_pred, labels=labels)
    )
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    f1 = (
        None
        if empty
        else float(
            f1_score(y_true, y_pred, labels=labels[present], average="macro", zero_division=0)
        )
    )
    aucs = per_class_auc(y_true, probs)
    sensitivity, specificity = sensitivity_specificity(cm)
    calibration, ece = calibration_report(probs, y_true, n_bins)
    support = cm.sum(1)
    balanced = is_class_balanced(support)
    out: dict[str, Any] = {
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else None,
        "accuracy": None if empty else float((y_pred == y_true).mean()),
        "macro_f1": f1,
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": cm.tolist(),
        "per_class_auc": aucs,
        "macro_auc": macro_auc(aucs),
        "auc_excluded_classes": [c for c, a in enumerate(aucs) if a is None],
        "per_class_sensitivity": sensitivity,
        "per_class_specificity": specificity,
        "ece": ece,
        "calibration": calibration,
        "class_support": support.tolist(),
        "class_balanced": balanced,
    }
    out["notes"] = metric_notes(out)
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


def macro_auc(aucs: list[float | None]) -> float | None:
    """Macro one-vs-rest AUC over the classes whose AUC is defined.

    With every class defined this is scikit-learn's
    `roc_auc_score(y, probs, multi_class="ovr", average="macro")`, which is the unweighted mean
    of the per-class binary AUCs; unlike that call it does not fail when a class is missing from
    the split (its AUC is undefined), it leaves that class out (`auc_excluded_classes`).
    """
    defined = [a for a in aucs if a is not None]
    return float(np.mean(defined)) if defined else None


def sensitivity_specificity(cm: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class sensitivity TP/(TP+FN) and specificity TN/(TN+FP), one class vs the rest,
    from a confusion matrix (rows: true label, columns: predicted).

    Sensitivity is the class's recall; it is None for a class absent from the split,
    specificity None for a class that is the whole split (no negatives).
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    sens = [None if p + n == 0 else float(p / (p + n)) for p, n in zip(tp, fn, strict=True)]
    spec = [None if n + p == 0 else float(n / (n + p)) for n, p in zip(tn, fp, strict=True)]
    return sens, spec


def reliability_bins(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS
) -> dict[str, np.ndarray]:
    """Top-label reliability bins: per equal-width confidence bin, the sample count, mean
    confidence and accuracy (NaN where a bin is empty).

    Bin i holds confidences in [i/n, (i+1)/n); a confidence of exactly 1 goes to the last bin.
    torchmetrics bins the same way except that it gives confidence 1 a bin of its own, which
    suits no diagram; its `multiclass_calibration_error` is the reference in the tests.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    index = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, conf, n_bins) / count
        accuracy = np.bincount(index, correct.astype(np.float64), n_bins) / count
    return {"count": count, "confidence": confidence, "accuracy": accuracy}


def ece_from_bins(bins: dict[str, np.ndarray]) -> float | None:
    """ECE = sum over bins of (share of samples) x |accuracy - mean confidence|; None if empty."""
    count = bins["count"]
    total = count.sum()
    if total == 0:
        return None
    full = count > 0
    gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(count[full] / total * gap))


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS
) -> float | None:
    """Top-label expected calibration error (L1, equal-width bins) of the predicted class."""
    return ece_from_bins(reliability_bins(probs, y_true, n_bins))


def calibration_report(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS
) -> tuple[dict[str, Any], float | None]:
    """A report's "calibration" entry (n_bins and, per bin, count, mean confidence and
    accuracy, None where empty) and its ECE: what the reliability diagram draws."""
    bins = reliability_bins(probs, y_true, n_bins)
    entry = {
        "n_bins": int(n_bins),
        "count": bins["count"].tolist(),
        "confidence": _nones(bins["confidence"]),
        "accuracy": _nones(bins["accuracy"]),
    }
    return entry, ece_from_bins(bins)


def is_class_balanced(support: np.ndarray) -> bool:
    """Whether every class present in the split has the same number of samples (`support`:
    samples per label).

    Then accuracy = sum_c TP_c / N = sum_c TP_c / (k n) = mean_c recall_c = balanced accuracy
    exactly (k present classes of n samples each).
    """
    present = support[support > 0]
    return bool(len(present)) and bool((present == present[0]).all())


def metric_notes(m: dict[str, Any], class_names: list[str] | None = None) -> list[str]:
    """Sentences for values a reader could misread (results.json's `notes`, the table's
    caption): accuracy equal to balanced accuracy, classes left out of the macro AUC.
    Classes are named by `class_names`, else by label."""
    notes = []
    support = m["class_support"]
    if m["class_balanced"]:
        n = next(s for s in support if s > 0)
        which = (
            f"the split is class-balanced ({n} per class)"
            if all(s > 0 for s in support)
            else f"every class present in the split has {n} samples"
        )
        notes.append(
            f"{which}, so accuracy equals balanced_accuracy (mean per-class recall) exactly"
        )
    excluded = m["auc_excluded_classes"]
    if excluded and m["macro_auc"] is not None:
        names = ", ".join(class_names[c] if class_names else f"label {c}" for c in excluded)
        notes.append(
            f"one-vs-rest AUC is undefined for {names} (absent from the split, or its only "
            f"class); macro_auc averages the other {len(support) - len(excluded)} classes"
        )
    elif m["macro_auc"] is None:
        notes.append("one-vs-rest AUC is undefined: the split holds fewer than two classes")
    return notes


def _nones(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _nanmean(values: list[float]) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None
