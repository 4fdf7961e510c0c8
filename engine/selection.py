"""Per-class top-k under quotas: linear time, deterministic ties (lower index first).

The curriculum loop hands over candidates already grouped by class (the pool keeps each
class's indices), so its path, `select_segments`, is one partition per class segment: about
the cost of a single `np.argpartition` over all scores. `select_per_class` takes candidates
in any order and groups them first (a radix sort of small label types, still O(N)).
"""

from __future__ import annotations

import numpy as np

from .errors import FlexsampleError, ParameterError


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
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FlexsampleError("a candidate label is outside the quota vector")
    small = labels.astype(np.uint8 if num_classes <= 256 else np.uint16, copy=False)
    order = np.argsort(small, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return order, np.concatenate([[0], np.cumsum(counts)])


def _check_quotas(quotas: np.ndarray) -> np.ndarray:
    quotas = np.asarray(quotas, dtype=np.int64)
    if quotas.ndim != 1 or (quotas < 0).any():
        raise FlexsampleError("quotas must be a vector of counts >= 0")
    return quotas


def select_segments(
    candidates: np.ndarray,
    scores: np.ndarray,
    bounds: np.ndarray,
    quotas: np.ndarray,
) -> np.ndarray:
    """The chosen global indices, for candidates grouped by class.

    Class c's candidates are `candidates[bounds[c]:bounds[c+1]]`, ascending (as the pool
    keeps them), with their scores at the same positions; it gets its `quotas[c]` best.
    Returned sorted ascending.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores)
    quotas = _check_quotas(quotas)
    if len(candidates) != len(scores):
        raise FlexsampleError("candidates and scores must have the same length")
    if len(bounds) != len(quotas) + 1 or bounds[-1] != len(candidates):
        raise FlexsampleError("bounds must hold C + 1 offsets ending at len(candidates)")
    chosen = []
    for c in np.flatnonzero(quotas):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if quotas[c] > hi - lo:
            raise FlexsampleError(
                f"quota {quotas[c]} for class {c} exceeds its {hi - lo} candidates"
            )
        chosen.append(candidates[lo + top_k(scores[lo:hi], int(quotas[c]))])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen))


def select_per_class(
    candidates: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    quotas: np.ndarray,
) -> np.ndarray:
    """The global indices chosen: for each class c, its `quotas[c]` best-scoring candidates.

    `labels` are the candidates' labels (aligned with `candidates` and `scores`). Within a
    class, ties go to the lower global index, so results do not depend on candidate order.
    Returned sorted ascending. O(N) time and memory.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    quotas = _check_quotas(quotas)
    if not (len(candidates) == len(scores) == len(labels)):
        raise FlexsampleError("candidates, scores and labels must have the same length")
    if len(candidates) > 1 and (np.diff(candidates) < 0).any():
        perm = np.argsort(candidates, kind="stable")  # ties then follow the global index
        candidates, scores, labels = candidates[perm], scores[perm], labels[perm]
    order, bounds = group_by_class(labels, len(quotas))
    return select_segments(candidates[order], scores[order], bounds, quotas)


ACQUISITIONS = ("topk", "power", "softmax", "softrank")


def _gumbel(seed: int, step: int, num_items: int, candidates: np.ndarray) -> np.ndarray:
    """Gumbel noise per global index, drawn from (seed, step) alone: neither the score batch
    size nor the candidate order changes a candidate's noise."""
    u = np.random.default_rng([seed, step, 0xAC9]).random(num_items)[candidates]
    return -np.log(-np.log(np.clip(u, 1e-300, 1.0 - 1e-16)))


def segment_ranks(scores: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """1-based rank of each score within its class segment (1 = highest; ties: lower position)."""
    ranks = np.empty(len(scores), dtype=np.float64)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        order = np.lexsort((np.arange(hi - lo), -scores[lo:hi]))
        ranks[lo + order] = np.arange(1, hi - lo + 1)
    return ranks


def acquisition_keys(
    scores: np.ndarray,
    candidates: np.ndarray,
    bounds: np.ndarray,
    mode: str,
    beta: float,
    *,
    seed: int,
    step: int,
    num_items: int,
) -> np.ndarray:
    """Keys whose per-class top-k is a stochastic batch (Kirsch et al. 2023, Gumbel-top-k).

    Taking the k largest of key = log weight + Gumbel noise samples k candidates without
    replacement with probability proportional to the weight: `power` weights s^beta (scores
    below 0 count as 0), `softmax` exp(beta s), `softrank` rank^-beta within the class.
    `topk` returns the scores themselves.
    """
    if mode not in ACQUISITIONS:
        accepted = ", ".join(ACQUISITIONS)
        raise ParameterError(f"unknown acquisition '{mode}'; accepted: {accepted}", "acquisition")
    scores = np.asarray(scores, dtype=np.float64)
    if mode == "topk":
        return scores
    if not (np.isfinite(beta) and beta > 0):
        raise ParameterError(
            f"acquisition_beta must be a finite number > 0, got {beta}", "acquisition_beta"
        )
    if mode == "power":
        log_weight = beta * np.log(np.maximum(scores, np.finfo(np.float64).tiny))
    elif mode == "softmax":
        log_weight = beta * scores
    else:
        log_weight = -beta * np.log(segment_ranks(scores, np.asarray(bounds)))
    return log_weight + _gumbel(seed, step, num_items, np.asarray(candidates, np.int64))
