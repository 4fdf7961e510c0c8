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
from flexsample.engine.interfaces import Policy, PolicyState
from flexsample.engine.options import opt
from flexsample.engine.registry import register_policy


class RoundSchedule(Policy):
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

    def __init__(self, jumps: Annotated[int, opt("number of jumps", ge=1, le=100_000)] = 3) -> None:
        if jumps < 1:
            raise FlexsampleError(f"step schedule: jumps must be >= 1, got {jumps}")
        self.jumps = int(jumps)

    def fraction(self, round_index: int, rounds: int) -> float:
        return math.floor(_progress(round_index, rounds) * self.jumps + 1e-9) / self.jumps


@register_policy("adaptive")
class AdaptiveSchedule(Policy):
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


def share_to_epochs(share: float, epoch_budget: int, least: int = 0) -> int:
    """A fraction of the epoch budget as a whole number of epochs: round half up, >= least."""
    return max(int(least), math.floor(float(share) * int(epoch_budget) + 0.5 + 1e-9))


@register_policy("plateau")
class PlateauSchedule(Policy):
    """The authors' query rule (FlexSampling `FlexSamplingTrainer.run`): after a warm-up, query
    on a validation plateau or a fixed interval after the last query, whichever comes first.

    Epoch counts are fractions of the epoch budget B (rounded half up), so one setting serves
    any budget; the defaults are the authors' 20, 7 and 5 of 120 epochs. W = `warmup_fraction`
    x B, P = `patience_fraction` x B (at least 1), I = `interval_fraction` x B (at least 1;
    0: no interval queries). As in the authors' loop, after each trained epoch e (0-based):

    - the plateau count is the number of epochs since validation balanced accuracy last rose
      above the best so far (which starts at 0, over the whole run, anchors included);
    - for e >= W the interval count grows by one;
    - a query comes when e >= W and (plateau count >= P or interval count >= I) and anything
      is left; it resets the interval count, and the plateau count when the plateau fired.

    So the anchors alone train at least W + 1 epochs. The engine asks before epoch e + 1; the
    query's samples join from that epoch on. The step's size is the authors' too:
    Σ_c min(pool_c, max(1, floor(pool_c · q · p_c))) with q = `query_fraction` and p_c from the
    last validation (`policies.allocations.remaining_difficulty_quotas`); pair it with the
    `remaining-difficulty` allocation at the same q for the authors' per-class quotas. With
    `fill_last` whatever is left joins at the start of the last round (the authors: never, so
    the run may end before the full set is used). The query epochs and which rule fired are
    the policy's state.
    """

    def __init__(
        self,
        warmup_fraction: Annotated[
            float, opt("warm-up on the anchors, as a fraction of the epoch budget", ge=0, le=1)
        ] = 20 / 120,
        patience_fraction: Annotated[
            float,
            opt(
                "epochs without improvement before a query, as a fraction of the epoch "
                "budget (at least 1 epoch)",
                ge=0,
                le=1,
            ),
        ] = 7 / 120,
        interval_fraction: Annotated[
            float,
            opt(
                "epochs after the last query that force the next one, as a fraction of the "
                "epoch budget (0: off; else at least 1 epoch)",
                ge=0,
                le=1,
            ),
        ] = 5 / 120,
        query_fraction: Annotated[
            float,
            opt("q: a step adds sum_c min(pool_c, max(1, floor(pool_c q p_c)))", gt=0, le=1),
        ] = 0.1,
        fill_last: Annotated[
            bool, opt("whether the rest of the pool joins at the start of the last round")
        ] = False,
    ) -> None:
        for key, value in (
            ("warmup_fraction", warmup_fraction),
            ("patience_fraction", patience_fraction),
            ("interval_fraction", interval_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise FlexsampleError(f"plateau policy: {key} must be in [0, 1], got {value}")
        if not 0.0 < query_fraction <= 1.0:
            raise FlexsampleError(
                f"plateau policy: query_fraction must be in (0, 1], got {query_fraction}"
            )
        self.warmup_fraction = float(warmup_fraction)
        self.patience_fraction = float(patience_fraction)
        self.interval_fraction = float(interval_fraction)
        self.query_fraction = float(query_fraction)
        self.fill_last = bool(fill_last)
        # state.epoch of each query -> True when the plateau rule fired (it resets that count)
        self.queries: dict[int, bool] = {}

    def epochs(self, epoch_budget: int) -> tuple[int, int, int]:
        """(warm-up W, patience P, interval I; 0 = off) in epochs for this budget."""
        interval = (
            share_to_epochs(self.interval_fraction, epoch_budget, 1)
            if self.interval_fraction > 0
            else 0
        )
        return (
            share_to_epochs(self.warmup_fraction, epoch_budget),
            share_to_epochs(self.patience_fraction, epoch_budget, 1),
            interval,
        )

    def triggers(self, state: PolicyState) -> tuple[bool, bool]:
        """(plateau, interval) after the last trained epoch, replaying the authors' counters
        over the validation history and the past queries."""
        warmup, patience, interval = self.epochs(state.epoch_budget)
        best, stale, since, last = 0.0, 0, 0, -1
        for rec in state.val_history:
            if rec.epoch >= state.epoch:
                break
            if rec.balanced_accuracy > best:
                best, stale = rec.balanced_accuracy, 0
            else:
                stale += 1
            if rec.epoch >= warmup:
                since += 1
            last = rec.epoch
            fired = self.queries.get(rec.epoch + 1)
            if fired is not None and rec.epoch + 1 < state.epoch:  # a past query's resets
                since = 0
                if fired:
                    stale = 0
        if last < warmup or last != state.epoch - 1:
            return False, False
        return stale >= patience, interval > 0 and since >= interval

    def _in_last_round(self, state: PolicyState) -> bool:
        return self.fill_last and state.round >= state.rounds - 1

    def should_query(self, state: PolicyState) -> bool:
        if int(state.remaining_counts.sum()) <= 0:
            return False
        return self._in_last_round(state) or any(self.triggers(state))

    def budget(self, state: PolicyState) -> int:
        from .allocations import remaining_difficulty_quotas

        remaining = int(state.remaining_counts.sum())
        if remaining <= 0:
            return 0
        plateau, _ = self.triggers(state)
        self.queries[int(state.epoch)] = plateau
        if self._in_last_round(state):
            return remaining
        quotas = remaining_difficulty_quotas(
            state.remaining_counts, state.last_recall, self.query_fraction
        )
        return int(quotas.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"queries": [[e, bool(p)] for e, p in sorted(self.queries.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queries = {int(e): bool(p) for e, p in state.get("queries", [])}


@register_policy("full")
class FullSchedule(Policy):
    """All training data from the first epoch: the plain long-tailed baseline."""

    def should_query(self, state: PolicyState) -> bool:
        return int(state.remaining_counts.sum()) > 0

    def budget(self, state: PolicyState) -> int:
        return int(state.remaining_counts.sum())


@register_policy("balanced")
class BalancedSchedule(Policy):
    """The anchors only, never grown: the under-sampling baseline."""

    def should_query(self, state: PolicyState) -> bool:
        return False

    def budget(self, state: PolicyState) -> int:
        return 0
