"""Schedules: when the subset grows and by how much in total.

Round schedules grow the subset only at round boundaries, from the anchors (round 0) to the
full training split, which they reach exactly at the start of the last round, so every method
ends on the full set within the same epoch budget. Their shapes differ only in
`fraction(round, rounds)`, the share of the non-anchor pool in the subset during that round.
`adaptive` queries on validation plateaus instead (the paper's rule); `full` and `balanced`
are the two extremes and baselines.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import PolicyState, Schedule
from flexsample.engine.options import opt
from flexsample.engine.registries import register_policy


class RoundSchedule(Schedule):
    """Queries at round boundaries up to a target size given by `fraction(round, rounds)`.

    `fraction` must be non-decreasing with fraction(0) = 0 (the anchors alone in the first
    round) and fraction(R - 1) = 1. The target is rounded down and held below the full
    split before the last round, so the full split joins exactly at the start of round R - 1
    (with a single round, at the first epoch).
    """

    def fraction(self, round_index: int, rounds: int) -> float:
        raise NotImplementedError

    def target(self, state: PolicyState) -> int:
        grow = state.total_size - state.anchor_size
        if state.rounds == 1 or state.round >= state.rounds - 1 or grow <= 0:
            return state.total_size
        frac = min(max(float(self.fraction(state.round, state.rounds)), 0.0), 1.0)
        return state.anchor_size + min(grow - 1, math.floor(grow * frac + 1e-9))

    def should_query(self, state: PolicyState) -> bool:
        return state.at_round_start and self.target(state) > state.subset_size

    def budget(self, state: PolicyState) -> int:
        return max(0, self.target(state) - state.subset_size)


def _progress(round_index: int, rounds: int) -> float:
    """Position of a round in [0, 1]: 0 for the first, 1 for the last."""
    return round_index / (rounds - 1) if rounds > 1 else 1.0


@register_policy("linear")
class LinearSchedule(RoundSchedule):
    """Subset size grows linearly from the anchors (first round) to the full split (last)."""

    def fraction(self, round_index: int, rounds: int) -> float:
        return _progress(round_index, rounds)


@register_policy("convex")
class ConvexSchedule(RoundSchedule):
    """Quadratic growth, t^2: stays near the balanced anchors longer, then fills fast."""

    def fraction(self, round_index: int, rounds: int) -> float:
        return _progress(round_index, rounds) ** 2


@register_policy("concave")
class ConcaveSchedule(RoundSchedule):
    """Square-root growth, sqrt(t): most of the pool joins early, the last rounds add little."""

    def fraction(self, round_index: int, rounds: int) -> float:
        return math.sqrt(_progress(round_index, rounds))


@register_policy("exponential")
class ExponentialSchedule(RoundSchedule):
    """Geometric growth: the subset size is multiplied by the same factor every round.

    Size in round r is anchors * (N / anchors)^(r / (R - 1)), so the relative growth per
    round is constant: small absolute steps while the subset is small, large ones at the end.
    """

    def fraction(self, round_index: int, rounds: int) -> float:  # used only without anchors
        t = _progress(round_index, rounds)
        return (math.exp(4.0 * t) - 1.0) / (math.exp(4.0) - 1.0)

    def target(self, state: PolicyState) -> int:
        grow = state.total_size - state.anchor_size
        if state.anchor_size <= 0 or grow <= 0:
            return super().target(state)
        if state.rounds == 1 or state.round >= state.rounds - 1:
            return state.total_size
        t = _progress(state.round, state.rounds)
        size = state.anchor_size * (state.total_size / state.anchor_size) ** t
        return min(state.total_size - 1, math.floor(size + 1e-9))


@register_policy("step")
class StepSchedule(RoundSchedule):
    """A few large jumps: the pool joins in `jumps` equal parts, the last one in the last round.

    With t = round / (R - 1) the fraction is floor(t * jumps) / jumps: flat between jumps, so
    the model trains several rounds on each subset.
    """

    def __init__(
        self, jumps: Annotated[int, opt("number of jumps", ge=1, le=100_000)] = 3
    ) -> None:
        if jumps < 1:
            raise FlexsampleError(f"step schedule: jumps must be >= 1, got {jumps}")
        self.jumps = int(jumps)

    def fraction(self, round_index: int, rounds: int) -> float:
        return math.floor(_progress(round_index, rounds) * self.jumps + 1e-9) / self.jumps


@register_policy("adaptive")
class AdaptiveSchedule(Schedule):
    """The paper's rule: query when validation stops improving, then finish on the full set.

    Before an epoch, if validation balanced accuracy over the epochs trained on the current
    subset has not improved for `patience` epochs, add `query_ratio` of the remaining pool
    (at least one sample). Whatever is still left joins at the start of the last round, so
    the last `epochs_per_round` epochs train on the full split. `budget()` marks the epoch
    of the query (the loop calls it once per query); that mark is the schedule's state.
    """

    def __init__(
        self,
        patience: Annotated[
            int, opt("epochs without improvement before a query", ge=1, le=100_000)
        ] = 3,
        query_ratio: Annotated[
            float, opt("fraction of the remaining pool added per query", gt=0, le=1)
        ] = 0.25,
    ) -> None:
        if patience < 1:
            raise FlexsampleError(f"adaptive schedule: --patience must be >= 1, got {patience}")
        if not 0.0 < query_ratio <= 1.0:
            raise FlexsampleError(
                f"adaptive schedule: --query-ratio must be in (0, 1], got {query_ratio}"
            )
        self.patience = int(patience)
        self.query_ratio = float(query_ratio)
        self.last_query_epoch = 0

    def _in_last_round(self, state: PolicyState) -> bool:
        return state.round >= state.rounds - 1

    def plateaued(self, state: PolicyState) -> bool:
        """No improvement of the best balanced accuracy on this subset for `patience` epochs."""
        seg = [v.balanced_accuracy for v in state.val_history if v.epoch >= self.last_query_epoch]
        if len(seg) <= self.patience:
            return False
        best = max(range(len(seg)), key=lambda i: (seg[i], -i))  # first epoch of the best
        return len(seg) - 1 - best >= self.patience

    def should_query(self, state: PolicyState) -> bool:
        if int(state.remaining_counts.sum()) <= 0:
            return False
        return self._in_last_round(state) or self.plateaued(state)

    def budget(self, state: PolicyState) -> int:
        remaining = int(state.remaining_counts.sum())
        if remaining <= 0:
            return 0
        if self._in_last_round(state):
            n = remaining
        else:
            n = min(remaining, max(1, math.ceil(self.query_ratio * remaining - 1e-9)))
        self.last_query_epoch = state.epoch
        return n

    def state_dict(self) -> dict[str, Any]:
        return {"last_query_epoch": self.last_query_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_query_epoch = int(state.get("last_query_epoch", 0))


@register_policy("full")
class FullSchedule(Schedule):
    """All training data from the first epoch: the plain long-tailed baseline."""

    def should_query(self, state: PolicyState) -> bool:
        return int(state.remaining_counts.sum()) > 0

    def budget(self, state: PolicyState) -> int:
        return int(state.remaining_counts.sum())


@register_policy("balanced")
class BalancedSchedule(Schedule):
    """The anchors only, never grown: the under-sampling baseline."""

    def should_query(self, state: PolicyState) -> bool:
        return False

    def budget(self, state: PolicyState) -> int:
        return 0
