"""Per-class top-k under quotas: linear time, deterministic ties (lower index first)."""

from __future__ import annotations

import numpy as np

from .errors import FlexsampleError


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores; ties at the cut go to the lower position. O(n)."""
    n = len(scores)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    kth = np.partition(scores, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def group_by_class(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): positions sorted by label (stable) and each class's slice bounds.

    Small label types sort by radix in NumPy, so this is linear in len(labels).
    """
    small = labels.astype(np.uint8 if num_classes <= 256 else np.uint16, copy=False)
    order = np.argsort(small, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return order, np.concatenate([[0], np.cumsum(counts)])


def select_per_class(
    candidates: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    quotas: np.ndarray,
) -> np.ndarray:
    """The global indices chosen: for each class c, its `quotas[c]` best-scoring candidates.

    `labels` are the candidates' labels (aligned with `candidates` and `scores`). Within a
    class, ties go to the lower global index, so results do not depend on candidate order.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    quotas = np.asarray(quotas, dtype=np.int64)
    if not (len(candidates) == len(scores) == len(labels)):
        raise FlexsampleError("candidates, scores and labels must have the same length")
    if (quotas < 0).any():
        raise FlexsampleError("quotas must be >= 0")
    if len(labels) and labels.max() >= len(quotas):
        raise FlexsampleError("a candidate label is outside the quota vector")
    # canonical order: by global index, so tie-breaking by position = by index
    if len(candidates) > 1 and (np.diff(candidates) < 0).any():
        perm = np.argsort(candidates, kind="stable")
        candidates, scores, labels = candidates[perm], scores[perm], labels[perm]
    order, bounds = group_by_class(labels, len(quotas))
    chosen = []
    for c, q in enumerate(quotas):
        if q == 0:
            continue
        members = order[bounds[c] : bounds[c + 1]]
        if q > len(members):
            raise FlexsampleError(
                f"quota {q} for class {c} exceeds its {len(members)} candidates"
            )
        chosen.append(members[top_k(scores[members], int(q))])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return candidates[np.sort(np.concatenate(chosen))]
