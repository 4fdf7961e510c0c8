"""Allocations: how a step's budget splits across classes.

Every allocation returns integer quotas that sum to min(budget, remaining), never exceed
what a class has left, and hand a capped class's excess to the others by weight
(`apportion`). Ties go to the lower class label, so quotas are deterministic.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Allocation, PolicyState
from flexsample.engine.options import opt
from flexsample.engine.registry import register_allocation

from .apportion import apportion


@register_allocation("proportional")
class ProportionalAllocation(Allocation):
    """Quotas proportional to what each class has left: every class interpolates to full."""

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        remaining = state.remaining_counts
        return apportion(remaining.astype(np.float64), budget, remaining)


@register_allocation("balanced")
class BalancedAllocation(Allocation):
    """Equal shares for every class with samples left; a capped class's excess goes to the rest."""

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        remaining = state.remaining_counts
        return apportion(np.ones(len(remaining)), budget, remaining)


def difficulty_weights(recall: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Normalised class weights p_c ∝ 1 − recall_c, each at least `floor` times the mean (1/C).

    The floor keeps a class the model already gets right from starving (it still has samples
    the model has not seen). Recall outside [0, 1] or NaN is clipped / read as 0. When every
    recall is 1 the weights are equal.
    """
    r = np.clip(np.nan_to_num(np.asarray(recall, dtype=np.float64), nan=0.0), 0.0, 1.0)
    w = 1.0 - r
    c = len(w)
    if c == 0:
        return w
    w = w / w.sum() if w.sum() > 0 else np.full(c, 1.0 / c)
    w = np.maximum(w, floor / c)
    return w / w.sum()


@register_allocation("difficulty")
class DifficultyAllocation(Allocation):
    """Quotas ∝ 1 − validation recall of each class (harder classes get more); the paper's.

    Weights come from the last validation measurement (`difficulty_weights`, with a floor of
    `difficulty_floor` times the mean weight, default 0.05); before any validation it falls
    back to equal shares. Capped classes pass their excess on by weight.
    """

    def __init__(
        self,
        difficulty_floor: Annotated[
            float, opt("weight floor, as a fraction of the mean weight", ge=0, le=1)
        ] = 0.05,
    ) -> None:
        if not 0.0 <= difficulty_floor <= 1.0:
            raise FlexsampleError(
                f"difficulty allocation: difficulty_floor must be in [0, 1], got {difficulty_floor}"
            )
        self.difficulty_floor = float(difficulty_floor)

    def weights(self, state: PolicyState) -> np.ndarray:
        recall = state.last_recall
        c = state.num_classes
        if recall is None or len(recall) != c:
            return np.full(c, 1.0 / c)
        return difficulty_weights(recall, self.difficulty_floor)

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        return apportion(self.weights(state), budget, state.remaining_counts)


def remaining_difficulty_weights(recall: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The authors' p_c = (1 − acc_c) · K / Σ_j (1 − acc_j): mean 1, all 1 when every class is
    perfect (Σ_j (1 − acc_j) < 1e-8, the authors' test) or before any validation.

    Recall outside [0, 1] is clipped and NaN read as 0 (the authors read a class with no
    validation image as accuracy 0)."""
    if recall is None or len(recall) != num_classes:
        return np.ones(num_classes)
    acc = np.clip(np.nan_to_num(np.asarray(recall, dtype=np.float64), nan=0.0), 0.0, 1.0)
    raw = 1.0 - acc
    total = float(raw.sum())
    if total < 1e-8:
        return np.ones(num_classes)
    return raw * num_classes / total  # the authors' order of operations: floor() is exact


def remaining_difficulty_quotas(
    remaining: np.ndarray, recall: np.ndarray | None, query_fraction: float
) -> np.ndarray:
    """The authors' step (FlexSampling `CurriculumSampler.query`): per class
    n_c = min(pool_c, max(1, floor(pool_c · q · p_c))), 0 for a class with nothing left."""
    pool = np.asarray(remaining, dtype=np.int64)
    p = remaining_difficulty_weights(recall, len(pool))
    # in the authors' order of operations (len(pool) * q * p_c, then int()), so floor() lands
    # on their side of every integer, 2.9999999999999996 included
    share = pool.astype(np.float64) * float(query_fraction) * p
    raw = np.floor(share).astype(np.int64)
    return np.where(pool > 0, np.minimum(pool, np.maximum(1, raw)), 0)


@register_allocation("remaining-difficulty")
class RemainingDifficultyAllocation(Allocation):
    """The authors' quotas: each class's own remaining pool scaled by its relative difficulty.

    n_c = min(pool_c, max(1, floor(pool_c · q · p_c))), p_c = (1 − recall_c) · K / Σ_j (1 −
    recall_j) from the last validation (all 1 when every class is perfect or before any
    validation), q = `query_fraction`, pool_c what class c has left (0 when nothing is left).

    These quotas define a step's size rather than split one. The budget still rules, as for
    every allocation (quotas sum to min(budget, remaining)): a budget equal to Σ n_c gets n
    exactly; that is what the `plateau` policy asks with the same `query_fraction`, so the
    pair is the authors' step 4. A smaller budget trims n in proportion (never above n_c); a
    larger one (a policy's final fill) gives n plus the extra split over what is left beyond
    n, in proportion to (pool_c − n_c) · p_c.
    """

    def __init__(
        self,
        query_fraction: Annotated[
            float, opt("q: a class's quota is about q x its remaining pool x p_c", gt=0, le=1)
        ] = 0.1,
    ) -> None:
        if not 0.0 < query_fraction <= 1.0:
            raise FlexsampleError(
                f"remaining-difficulty allocation: query_fraction must be in (0, 1], got "
                f"{query_fraction}"
            )
        self.query_fraction = float(query_fraction)

    def authors_quotas(self, state: PolicyState) -> np.ndarray:
        """n_c of the formula, before the budget is applied."""
        return remaining_difficulty_quotas(
            state.remaining_counts, state.last_recall, self.query_fraction
        )

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        remaining = np.asarray(state.remaining_counts, dtype=np.int64)
        n = self.authors_quotas(state)
        budget = int(min(max(budget, 0), remaining.sum()))
        total = int(n.sum())
        if budget == total:
            return n
        if budget < total:
            return apportion(n.astype(np.float64), budget, n)
        rest = remaining - n
        weights = rest * remaining_difficulty_weights(state.last_recall, len(n))
        return n + apportion(weights, budget - total, rest)
