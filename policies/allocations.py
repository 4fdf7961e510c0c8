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
from flexsample.engine.registries import register_allocation

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
