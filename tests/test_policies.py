"""Schedules x allocations driven through the real curriculum loop with a fake learner.

Invariants (issue 4): the subset only grows, never takes an index twice, respects the
allocation's quotas, reaches the full set exactly when the schedule says so, and is the
same for the same seed. Plus hand-checked shapes of each schedule and allocation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import EpochResult, PolicyState, ValRecord
from flexsample.engine.loop import Callback, Curriculum, QueryResult
from flexsample.engine.pool import Pool
from flexsample.engine.registries import (
    ALLOCATIONS as ALLOCATION_REGISTRY,
)
from flexsample.engine.registries import (
    POLICIES,
    get_allocation,
    get_anchors,
    get_estimator,
    get_policy,
    list_allocations,
    list_policies,
)
from flexsample.policies.allocations import difficulty_weights

ROUND_SCHEDULES = ["linear", "convex", "concave", "exponential", "step"]
SCHEDULES = [*ROUND_SCHEDULES, "adaptive", "full", "balanced"]
ALLOCATIONS = ["difficulty", "balanced", "proportional"]


class TinyModel(nn.Module):
    """Contract model (embed, head, dropout_p); the random estimator never runs it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(2, 4)
        self.head = nn.Linear(4, num_classes)
        self.dropout_p = 0.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FakeLearner:
    """Records what it is asked to train on; validation is a seeded function of the epoch."""

    def __init__(self, num_classes: int, seed: int, fail_at: int | None = None) -> None:
        self.model = TinyModel(num_classes)
        self.num_classes = num_classes
        self.seed = seed
        self.fail_at = fail_at
        self.trained: list[np.ndarray] = []
        self.rounds_started: list[int] = []
        self.last = (0, 0)

    def start_round(self, round_index: int, num_epochs: int) -> None:
        self.rounds_started.append(round_index)

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        if self.fail_at is not None and epoch == self.fail_at:
            raise RuntimeError("simulated crash")
        self.trained.append(np.array(indices, copy=True))
        self.last = (epoch, len(indices))
        return EpochResult(loss=0.0, seconds=0.0)

    def validate(self) -> tuple[float, list[float]]:
        rng = np.random.default_rng([self.seed, *self.last])
        recall = rng.random(self.num_classes)
        return float(recall.mean()), recall.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = tuple(state["last"])


class QuotaSpy(Callback):
    def __init__(self) -> None:
        self.queries: list[QueryResult] = []

    def on_query(self, result: QueryResult) -> None:
        self.queries.append(result)


class SpyAllocation:
    """Wraps an allocation to record (remaining, budget, quotas) of every call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[np.ndarray, int, np.ndarray]] = []

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        q = self.inner.quotas(state, budget)
        self.calls.append((state.remaining_counts.copy(), budget, np.asarray(q).copy()))
        return q

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def make_labels(counts: list[int], seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def run_curriculum(
    counts: list[int],
    schedule: str,
    allocation: str,
    rounds: int,
    epochs_per_round: int,
    seed: int,
    scaling: float = 0.5,
    options: dict[str, Any] | None = None,
    checkpoint_dir: Any = None,
    learner: FakeLearner | None = None,
) -> tuple[Curriculum, FakeLearner, SpyAllocation, QuotaSpy]:
    labels = make_labels(counts, 0)
    c = len(counts)
    options = options or {}
    pool = Pool(labels, c)
    learner = learner or FakeLearner(c, seed)
    # each component takes only the options it declares (an unknown one is refused)
    alloc_fields = ALLOCATION_REGISTRY.options(allocation).model_fields
    policy_fields = POLICIES.options(schedule).model_fields
    alloc = SpyAllocation(
        get_allocation(allocation, **{k: v for k, v in options.items() if k in alloc_fields})
    )
    spy = QuotaSpy()
    cur = Curriculum(
        pool,
        get_policy(schedule, **{k: v for k, v in options.items() if k in policy_fields}),
        alloc,
        get_estimator("random"),
        learner,
        inputs=lambda idx, bs: iter(()),
        rounds=rounds,
        epochs_per_round=epochs_per_round,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        callbacks=[spy],
    )
    anchors = get_anchors("random", anchor_scaling=scaling).select(labels, c, seed)
    cur.start(anchors)
    return cur, learner, alloc, spy


def test_registered_names() -> None:
    assert set(SCHEDULES) <= set(list_policies())
    assert set(ALLOCATIONS) <= set(list_allocations())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(1, 25), min_size=2, max_size=5),
    schedule=st.sampled_from(SCHEDULES),
    allocation=st.sampled_from(ALLOCATIONS),
    rounds=st.integers(1, 5),
    epochs_per_round=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    scaling=st.sampled_from([0.1, 0.5, 1.0]),
    patience=st.integers(1, 3),
    query_ratio=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
)
def test_curriculum_invariants(
    counts: list[int],
    schedule: str,
    allocation: str,
    rounds: int,
    epochs_per_round: int,
    seed: int,
    scaling: float,
    patience: int,
    query_ratio: float,
) -> None:
    opts = {"patience": patience, "query_ratio": query_ratio}
    cur, learner, alloc, spy = run_curriculum(
        counts, schedule, allocation, rounds, epochs_per_round, seed, scaling, opts
    )
    anchors = np.flatnonzero(cur.pool.entered == 0) if cur.anchor_size else np.zeros(0)
    cur.run()
    labels = cur.pool.labels
    total, budget = len(labels), rounds * epochs_per_round
    trained = learner.trained
    assert len(trained) == budget

    # the subset only grows, and each epoch trains on exactly the pool's members so far
    for before, after in zip(trained, trained[1:], strict=False):
        assert np.isin(before, after).all() and len(after) >= len(before)
    # no index enters twice; every query adds fresh indices of the expected classes
    seen = set(anchors.tolist()) if cur.anchor_size else set()
    for q in spy.queries:
        chosen = q.chosen.tolist()
        assert len(set(chosen)) == len(chosen) and not seen & set(chosen)
        seen |= set(chosen)
        assert np.array_equal(np.bincount(labels[q.chosen], minlength=len(counts)), q.quotas)
    # quotas: within what each class has left, summing to the (capped) budget
    for remaining, asked, quotas in alloc.calls:
        assert (quotas >= 0).all() and (quotas <= remaining).all()
        assert quotas.sum() == min(asked, remaining.sum())

    sizes = [len(t) for t in trained]
    full_at = next((e for e, s in enumerate(sizes) if s == total), None)
    last_round = (rounds - 1) * epochs_per_round
    grows = cur.anchor_size < total
    if schedule in ROUND_SCHEDULES:
        assert full_at == (last_round if grows else 0)
        for e in range(1, budget):  # sizes change only at round boundaries
            if e % epochs_per_round:
                assert sizes[e] == sizes[e - 1]
    elif schedule == "adaptive":
        assert full_at is not None and full_at <= last_round
    elif schedule == "full":
        assert full_at == 0
    else:  # balanced never grows
        assert all(s == cur.anchor_size for s in sizes)

    # same seed, same selection
    again, learner2, _, _ = run_curriculum(
        counts, schedule, allocation, rounds, epochs_per_round, seed, scaling, opts
    )
    again.run()
    assert np.array_equal(again.pool.entered, cur.pool.entered)
    assert all(np.array_equal(a, b) for a, b in zip(trained, learner2.trained, strict=True))


def test_adaptive_resumes_from_checkpoint(tmp_path: Any) -> None:
    from flexsample.engine.checkpoint import load_checkpoint

    counts, opts = [20, 9, 4, 2], {"patience": 1, "query_ratio": 0.3}
    ref, ref_learner, _, _ = run_curriculum(counts, "adaptive", "difficulty", 3, 4, 5, 0.1, opts)
    ref.run()
    crashing = FakeLearner(len(counts), 5, fail_at=6)
    cur, _, _, _ = run_curriculum(
        counts, "adaptive", "difficulty", 3, 4, 5, 0.1, opts, tmp_path, crashing
    )
    with pytest.raises(RuntimeError):
        cur.run()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    resumed, _, _, _ = run_curriculum(counts, "adaptive", "difficulty", 3, 4, 5, 0.1, opts)
    resumed.load_state_dict(state)
    resumed.run()
    assert np.array_equal(resumed.pool.entered, ref.pool.entered)


def state_for(
    counts: list[int],
    subset: list[int],
    epoch: int = 0,
    rounds: int = 5,
    epochs_per_round: int = 2,
    anchor_size: int | None = None,
    history: tuple[ValRecord, ...] = (),
) -> PolicyState:
    sub = np.asarray(subset, dtype=np.int64)
    return PolicyState(
        epoch=epoch,
        step=0,
        rounds=rounds,
        epochs_per_round=epochs_per_round,
        subset_counts=sub,
        remaining_counts=np.asarray(counts, dtype=np.int64) - sub,
        anchor_size=int(sub.sum()) if anchor_size is None else anchor_size,
        val_history=history,
    )


def targets(name: str, rounds: int, anchors: int, total: int) -> list[int]:
    sched = get_policy(name)
    out = []
    for r in range(rounds):
        sub, rest = np.array([anchors]), np.array([total - anchors])
        st_ = PolicyState(r, 0, rounds, 1, sub, rest, anchors)
        out.append(sched.target(st_))
    return out


def test_round_schedule_shapes() -> None:
    # 10 anchors, 110 total -> 100 to grow over 5 rounds (t = 0, .25, .5, .75, 1)
    assert targets("linear", 5, 10, 110) == [10, 35, 60, 85, 110]
    assert targets("convex", 5, 10, 110) == [10, 16, 35, 66, 110]
    assert targets("concave", 5, 10, 110) == [10, 60, 80, 96, 110]
    assert targets("exponential", 5, 10, 110) == [10, 18, 33, 60, 110]
    assert targets("step", 5, 10, 110) == [10, 10, 43, 76, 110]
    # never full before the last round, even when rounding would get there
    assert targets("concave", 10, 0, 5)[-2] == 4


def test_adaptive_plateau_and_last_round() -> None:
    sched = get_policy("adaptive", patience=2, query_ratio=0.25)
    hist = (ValRecord(0, 0.5, (0.5,)), ValRecord(1, 0.6, (0.6,)), ValRecord(2, 0.55, (0.5,)))
    st_ = state_for([40], [8], epoch=3, history=hist)
    assert not sched.should_query(st_)  # best at epoch 1, one epoch without improvement
    hist = (*hist, ValRecord(3, 0.6, (0.6,)))  # a tie is not an improvement
    st_ = state_for([40], [8], epoch=4, history=hist)
    assert sched.should_query(st_)
    assert sched.budget(st_) == 8  # ceil(0.25 * 32)
    assert sched.state_dict() == {"last_query_epoch": 4}
    # epochs before the query do not count towards the next plateau
    later = state_for([40], [16], epoch=5, history=(*hist, ValRecord(4, 0.1, (0.1,))))
    assert not sched.should_query(later)
    # the last round takes everything that is left
    last = state_for([40], [16], epoch=8, history=later.val_history)
    assert sched.should_query(last) and sched.budget(last) == 24
    with pytest.raises(FlexsampleError):
        get_policy("adaptive", query_ratio=0.0)


def test_balanced_and_full() -> None:
    st_ = state_for([30, 5], [5, 5])
    assert not get_policy("balanced").should_query(st_)
    assert get_policy("full").should_query(st_) and get_policy("full").budget(st_) == 25


def test_allocations_hand_computed() -> None:
    recall = (0.9, 0.5, 0.0, 1.0)
    hist = (ValRecord(0, float(np.mean(recall)), recall),)
    st_ = state_for([100, 100, 100, 100], [0, 0, 0, 0], history=hist)
    # weights 0.1, 0.5, 1.0, 0 -> normalised 1/16, 5/16, 10/16, 0; floor 0.05/4 for class 3
    w = difficulty_weights(np.array(recall), 0.05)
    raw = np.array([0.1, 0.5, 1.0, 0.0]) / 1.6
    raw = np.maximum(raw, 0.0125)
    assert np.allclose(w, raw / raw.sum())
    q = get_allocation("difficulty").quotas(st_, 160)
    assert q.sum() == 160 and q[2] > q[1] > q[0] > q[3] > 0
    # a capped class hands its excess to the others by weight
    st_ = state_for([100, 100, 3, 100], [0, 0, 0, 0], history=hist)
    q = get_allocation("difficulty").quotas(st_, 160)
    assert q[2] == 3 and q.sum() == 160
    # no validation yet: equal shares
    st_ = state_for([100, 100, 100, 100], [0, 0, 0, 0])
    assert get_allocation("difficulty").quotas(st_, 40).tolist() == [10, 10, 10, 10]
    st_ = state_for([50, 4, 50, 0], [0, 0, 0, 0])
    assert get_allocation("balanced").quotas(st_, 40).tolist() == [18, 4, 18, 0]
    assert get_allocation("proportional").quotas(st_, 52).tolist() == [25, 2, 25, 0]


@settings(max_examples=200, deadline=None)
@given(
    remaining=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    budget=st.integers(0, 400),
    recall=st.lists(st.floats(0, 1), min_size=8, max_size=8),
    name=st.sampled_from(ALLOCATIONS),
)
def test_allocation_quota_contract(
    remaining: list[int], budget: int, recall: list[float], name: str
) -> None:
    c = len(remaining)
    rec = tuple(recall[:c])
    st_ = state_for(remaining, [0] * c, history=(ValRecord(0, float(np.mean(rec)), rec),))
    q = get_allocation(name).quotas(st_, budget)
    assert q.dtype.kind == "i" and q.shape == (c,)
    assert (q >= 0).all() and (q <= np.asarray(remaining)).all()
    assert q.sum() == min(budget, sum(remaining))
