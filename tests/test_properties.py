"""Property tests (hypothesis) for the pool, selection, schedules, allocations and estimators.

Each property is one the README promises: a sample is never selected twice, quotas are met
exactly with the best scores, schedules only grow and end on the full set within the epoch
budget, allocations split a budget without overdrawing a class, estimators give one finite
score per candidate.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import PolicyState, ValRecord
from flexsample.engine.pool import Pool
from flexsample.engine.registries import (
    ALLOCATIONS,
    ESTIMATORS,
    POLICIES,
    get_allocation,
    get_policy,
    list_allocations,
    list_estimators,
    list_policies,
)
from flexsample.engine.scoring import score_candidates
from flexsample.engine.selection import select_per_class, select_segments
from flexsample.estimators import build_estimator
from flexsample.training.models import adapt_model

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def builtins(registry, names: list[str]) -> list[str]:
    """The names that ship with flexsample (other tests may register plugins in-process)."""
    return [n for n in names if registry.is_builtin(n)]


# ----------------------------------------------------------------------------------- pool


@st.composite
def pool_plans(draw):
    """Labels, and a partition of a random subset of the indices into query batches."""
    n = draw(st.integers(1, 60))
    c = draw(st.integers(1, 5))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    order = draw(st.permutations(range(n)))
    taken = draw(st.integers(0, n))
    cuts = sorted(draw(st.lists(st.integers(0, taken), max_size=6)))
    bounds = [0, *cuts, taken]
    batches = [np.array(order[a:b], dtype=np.int64) for a, b in itertools.pairwise(bounds)]
    return labels, c, batches


@SETTINGS
@given(pool_plans(), st.data())
def test_pool_never_reselects_and_keeps_a_consistent_history(plan, data) -> None:
    labels, c, batches = plan
    pool = Pool(labels, c)
    for step, batch in enumerate(batches):
        pool.add(batch, step)
        members = pool.subset_indices()
        if len(members):  # adding any member again is refused and changes nothing
            again = data.draw(st.sampled_from(members.tolist()))
            before = pool.entered.copy()
            with pytest.raises(FlexsampleError):
                pool.add(np.array([again]), step + 1)
            assert (pool.entered == before).all()
    idx, steps = pool.history()
    joined = np.concatenate([np.zeros(0, np.int64), *batches])
    assert idx.tolist() == joined.tolist()  # in order of entry
    assert steps.tolist() == [s for s, b in enumerate(batches) for _ in b]
    assert len(set(idx.tolist())) == len(idx) == pool.size
    assert set(idx.tolist()) == set(pool.subset_indices().tolist())
    assert not set(pool.subset_indices().tolist()) & set(pool.remaining_indices().tolist())
    assert (pool.subset_counts() + pool.remaining_counts() == pool.total_counts()).all()
    assert (pool.subset_counts() == np.bincount(labels[idx], minlength=c)).all()
    for k in range(c):
        rest = pool.remaining_indices(k)
        assert (labels[rest] == k).all() and (pool.entered[rest] < 0).all()
    restored = Pool(labels, c)
    restored.load_state_dict(pool.state_dict())
    assert (restored.entered == pool.entered).all()
    assert restored.history()[0].tolist() == idx.tolist()


# ------------------------------------------------------------------------------ selection


@st.composite
def selection_problems(draw):
    """Candidates (shuffled global indices) with labels, scores with ties, feasible quotas."""
    n = draw(st.integers(0, 50))
    c = draw(st.integers(1, 5))
    universe = draw(st.integers(n, n + 30))
    candidates = np.array(draw(st.permutations(range(universe)))[:n], dtype=np.int64)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), np.int64)
    value = st.one_of(st.integers(0, 3).map(float), st.floats(-5, 5, allow_nan=False))
    scores = np.array(draw(st.lists(value, min_size=n, max_size=n)), dtype=np.float64)
    counts = np.bincount(labels, minlength=c)
    quotas = np.array([draw(st.integers(0, int(k))) for k in counts], dtype=np.int64)
    return candidates, scores, labels, quotas


def expected_choice(candidates, scores, labels, quotas) -> set[int]:
    """The definition: per class, the best scores; ties to the lower global index."""
    chosen: set[int] = set()
    for k, q in enumerate(quotas):
        members = [i for i in range(len(candidates)) if labels[i] == k]
        members.sort(key=lambda i: (-scores[i], candidates[i]))
        chosen |= {int(candidates[i]) for i in members[:q]}
    return chosen


@SETTINGS
@given(selection_problems())
def test_select_per_class_takes_each_quota_of_best_distinct_candidates(problem) -> None:
    candidates, scores, labels, quotas = problem
    got = select_per_class(candidates, scores, labels, quotas)
    assert len(set(got.tolist())) == len(got) == int(quotas.sum())
    assert (np.diff(got) > 0).all()  # sorted, distinct
    label_of = dict(zip(candidates.tolist(), labels.tolist(), strict=True))
    per_class = np.bincount([label_of[i] for i in got.tolist()], minlength=len(quotas))
    assert per_class.tolist() == quotas.tolist()
    assert set(got.tolist()) == expected_choice(candidates, scores, labels, quotas)
    # the order candidates come in does not matter
    perm = np.random.default_rng(len(candidates)).permutation(len(candidates))
    again = select_per_class(candidates[perm], scores[perm], labels[perm], quotas)
    assert again.tolist() == got.tolist()


@SETTINGS
@given(selection_problems())
def test_select_segments_matches_select_per_class(problem) -> None:
    candidates, scores, labels, quotas = problem
    order = np.lexsort((candidates, labels))  # grouped by class, ascending inside, as the pool
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(quotas)))])
    got = select_segments(candidates[order], scores[order], bounds, quotas)
    assert got.tolist() == select_per_class(candidates, scores, labels, quotas).tolist()
    over = quotas.copy()
    counts = np.diff(bounds)
    if len(over):
        over[0] = counts[0] + 1
        with pytest.raises(FlexsampleError, match="exceeds"):
            select_segments(candidates[order], scores[order], bounds, over)


# ------------------------------------------------------------------------------ schedules

GROWS_TO_FULL = {"linear", "convex", "concave", "exponential", "step", "adaptive", "full"}
ROUND_SCHEDULES = {"linear", "convex", "concave", "exponential", "step"}


def drive(
    policy: str,
    totals: np.ndarray,
    anchors: np.ndarray,
    rounds: int,
    epr: int,
    accs: list[float],
    jumps: int,
    fill_last: bool = False,
) -> list[int]:
    """The loop's protocol on counts alone: ask before every epoch, grow by a proportional
    allocation; returns the subset size trained on at each epoch."""
    options = {"jumps": jumps} if policy == "step" else {}
    if policy == "plateau":
        options = {"fill_last": fill_last}
    schedule = get_policy(policy, **options)
    schedule.validate(rounds, epr)
    allocation = get_allocation("proportional")
    subset, remaining = anchors.copy(), totals - anchors
    history: list[ValRecord] = []
    sizes = []
    step = 0
    for epoch in range(rounds * epr):
        state = PolicyState(
            epoch,
            step,
            rounds,
            epr,
            subset.copy(),
            remaining.copy(),
            int(anchors.sum()),
            tuple(history),
        )
        if schedule.should_query(state):
            budget = schedule.budget(state)
            assert isinstance(budget, int) and 0 <= budget <= int(remaining.sum()), budget
            quotas = allocation.quotas(state, budget)
            subset, remaining = subset + quotas, remaining - quotas
            step += 1
        sizes.append(int(subset.sum()))
        acc = accs[epoch % len(accs)]
        history.append(ValRecord(epoch, acc, tuple([acc] * len(totals))))
    return sizes


@SETTINGS
@given(
    policy=st.sampled_from(sorted(GROWS_TO_FULL | {"balanced", "plateau"})),
    totals=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    anchor_share=st.floats(0, 1),
    rounds=st.integers(1, 7),
    epr=st.integers(1, 4),
    accs=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    jumps=st.integers(1, 5),
    fill_last=st.booleans(),
)
def test_schedules_grow_monotonically_and_end_on_the_full_set(
    policy, totals, anchor_share, rounds, epr, accs, jumps, fill_last
) -> None:
    totals = np.array(totals, dtype=np.int64)
    anchors = np.minimum(totals, np.floor(totals * anchor_share).astype(np.int64))
    sizes = drive(policy, totals, anchors, rounds, epr, accs, jumps, fill_last)
    assert all(a <= b for a, b in itertools.pairwise(sizes)), sizes  # never shrinks
    full, start = int(totals.sum()), int(anchors.sum())
    if policy == "balanced":
        assert set(sizes) == {start}
        return
    if policy == "plateau":  # the authors' rule: nothing forces the rest in, unless fill_last
        assert start <= sizes[0] and sizes[-1] <= full
        if fill_last:
            assert sizes[(rounds - 1) * epr] == full
        return
    assert policy in GROWS_TO_FULL and sizes[-1] == full  # within the epoch budget
    last_round = (rounds - 1) * epr
    assert sizes[last_round] == full  # the whole last round trains on the full set
    if policy in ROUND_SCHEDULES:
        # grows only at round starts, and reaches the full set no earlier than the last round
        for e in range(1, len(sizes)):
            if e % epr:
                assert sizes[e] == sizes[e - 1]
        if rounds > 1 and start < full:
            assert sizes[last_round - 1] < full and sizes[0] == start
    if policy == "full":
        assert sizes[0] == full


@SETTINGS
@given(
    policy=st.sampled_from(sorted(ROUND_SCHEDULES)),
    totals=st.lists(st.integers(1, 200), min_size=1, max_size=5),
    anchor_share=st.floats(0, 1),
    rounds=st.integers(2, 12),
    jumps=st.integers(1, 6),
)
def test_round_targets_are_non_decreasing(policy, totals, anchor_share, rounds, jumps) -> None:
    totals = np.array(totals, dtype=np.int64)
    anchors = np.minimum(totals, np.floor(totals * anchor_share).astype(np.int64))
    schedule = get_policy(policy, **({"jumps": jumps} if policy == "step" else {}))
    targets = [
        schedule.target(PolicyState(r, 0, rounds, 1, anchors, totals - anchors, int(anchors.sum())))
        for r in range(rounds)
    ]
    assert all(a <= b for a, b in itertools.pairwise(targets)), targets
    assert targets[-1] == int(totals.sum()) and targets[0] >= int(anchors.sum())


def test_every_builtin_schedule_is_covered() -> None:
    assert set(builtins(POLICIES, list_policies())) == GROWS_TO_FULL | {"balanced", "plateau"}


# ---------------------------------------------------------------------------- allocations


@SETTINGS
@given(
    name=st.sampled_from(["proportional", "balanced", "difficulty", "remaining-difficulty"]),
    remaining=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    budget=st.integers(0, 450),
    recall=st.one_of(st.none(), st.lists(st.floats(0, 1), min_size=8, max_size=8)),
    floor=st.floats(0, 1),
    fraction=st.floats(0.01, 1),
)
def test_allocations_split_the_budget_without_overdrawing(
    name, remaining, budget, recall, floor, fraction
) -> None:
    remaining = np.array(remaining, dtype=np.int64)
    c = len(remaining)
    history = () if recall is None else (ValRecord(0, 0.5, tuple(recall[:c])),)
    state = PolicyState(3, 1, 5, 2, np.zeros(c, np.int64), remaining, 0, history)
    options = {"difficulty_floor": floor} if name == "difficulty" else {}
    if name == "remaining-difficulty":
        options = {"query_fraction": fraction}
    quotas = np.asarray(get_allocation(name, **options).quotas(state, budget))
    assert quotas.shape == (c,) and np.issubdtype(quotas.dtype, np.integer)
    assert (quotas >= 0).all() and (quotas <= remaining).all()
    assert int(quotas.sum()) == min(budget, int(remaining.sum()))


def test_every_builtin_allocation_is_covered() -> None:
    assert set(builtins(ALLOCATIONS, list_allocations())) == {
        "proportional",
        "balanced",
        "difficulty",
        "remaining-difficulty",
    }


# ----------------------------------------------------------------------------- estimators


def _model(dim: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(dim, 12), nn.ReLU())
    return adapt_model(body, nn.Linear(12, classes), 0.5).eval()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(
        [
            *sorted(builtins(ESTIMATORS, list_estimators())),
            "mcdropout+density",
            "entropy+prototype-cosine",
        ]
    ),
    n=st.integers(4, 40),
    classes=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    subset_share=st.floats(0.05, 0.9),
    mc_mode=st.sampled_from(["head", "full"]),
    knn=st.integers(1, 12),
)
def test_every_estimator_gives_finite_scores_of_the_candidates_shape(
    name, n, classes, seed, subset_share, mc_mode, knn
) -> None:
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.normal(size=(n, 6)) * rng.uniform(0.01, 10), dtype=torch.float32)
    labels = rng.integers(0, classes, size=n)
    in_subset = rng.random(n) < subset_share
    in_subset[rng.integers(n)] = True  # at least one subset member
    in_subset[rng.integers(n)] = False  # and at least one candidate
    subset = np.flatnonzero(in_subset)
    candidates = rng.permutation(np.flatnonzero(~in_subset))
    ctx = ScoringContext(
        _model(6, classes, seed),
        tensor_inputs(x),
        labels,
        seed=seed,
        step=1,
        batch_size=7,
        subset_indices=subset,
    )
    given = {"mc_samples": 3, "mc_mode": mc_mode, "knn": knn}
    # each option goes to the parts that declare it; one no part declares is refused
    takes = set().union(*(ESTIMATORS.options(p).model_fields for p in name.split("+")))
    est = build_estimator(name, **{k: v for k, v in given.items() if k in takes})
    scores = score_candidates(est, ctx, candidates)
    assert scores.shape == candidates.shape
    assert np.isfinite(scores).all()


def test_every_builtin_estimator_is_covered() -> None:
    assert {
        "random",
        "entropy",
        "margin",
        "least-confidence",
        "mcdropout",
        "density",
        "info-density",
        "prototype-cosine",
    } <= set(builtins(ESTIMATORS, list_estimators()))
