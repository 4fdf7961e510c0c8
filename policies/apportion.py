"""Integer apportionment: split a budget across classes by weight, under per-class caps."""

from __future__ import annotations

import numpy as np


def apportion(weights: np.ndarray, budget: int, caps: np.ndarray) -> np.ndarray:
    """Quotas q with sum(q) = min(budget, sum(caps)), 0 <= q <= caps, q roughly ∝ weights.

    Classes whose proportional share exceeds their cap are capped and the excess is
    redistributed over the others by weight (water-filling); the integer remainder goes
    to the largest fractional parts, ties to the lower class. Zero-weight classes only
    receive budget that nothing else can absorb (then in proportion to their caps).
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    caps = np.asarray(caps, dtype=np.int64)
    if w.shape != caps.shape:
        raise ValueError("weights and caps must have the same shape")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and >= 0")
    budget = int(min(max(budget, 0), caps.sum()))
    w[caps <= 0] = 0.0
    if w.sum() <= 0 or (caps[w > 0].sum() < budget):
        # budget beyond what weighted classes hold spills over in proportion to capacity
        w = np.where(w > 0, w * caps.sum() / max(w.sum(), 1e-300) + caps, caps).astype(np.float64)
    x = np.zeros_like(w)
    free = w > 0
    left = float(budget)
    while left > 1e-9 and free.any():
        share = left * w / w[free].sum()
        share[~free] = 0.0
        over = free & (x + share >= caps)
        if not over.any():
            x += share
            break
        left -= float((caps[over] - x[over]).sum())
        x[over] = caps[over]
        free &= ~over
    q = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    short = budget - int(q.sum())
    if short > 0:
        frac = np.where(q < caps, x - q, -np.inf)
        order = np.lexsort((np.arange(len(q)), -frac))
        q[order[:short]] += 1
    return q
