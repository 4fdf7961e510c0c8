"""The pool: membership, per-class views, entry history, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexsample.engine import FlexsampleError, Pool


def test_counts_and_views():
    labels = np.array([0, 1, 1, 2, 2, 2, 0])
    pool = Pool(labels, num_classes=4)
    assert pool.total_counts().tolist() == [2, 2, 3, 0]
    pool.add(np.array([5, 0]), step=0)
    assert pool.size == 2 and not pool.is_full
    assert pool.subset_counts().tolist() == [1, 0, 1, 0]
    assert pool.remaining_counts().tolist() == [1, 2, 2, 0]
    assert pool.subset_indices().tolist() == [0, 5]
    assert pool.remaining_indices(2).tolist() == [3, 4]
    assert [c.tolist() for c in pool.class_indices] == [[0, 6], [1, 2], [3, 4, 5], []]
    pool.add(np.array([1, 2, 3, 4, 6]), step=1)
    assert pool.is_full
    idx, step = pool.history()
    assert idx.tolist() == [5, 0, 1, 2, 3, 4, 6] and step.tolist() == [0, 0, 1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    ("indices", "message"),
    [([0, 0], "same index twice"), ([7], "must lie in"), ([-1], "must lie in")],
)
def test_add_rejects_bad_indices(indices, message):
    pool = Pool(np.zeros(7, dtype=int))
    with pytest.raises(FlexsampleError, match=message):
        pool.add(np.array(indices), step=0)


def test_add_rejects_members():
    pool = Pool(np.zeros(3, dtype=int))
    pool.add(np.array([1]), 0)
    with pytest.raises(FlexsampleError, match="already in the subset"):
        pool.add(np.array([1, 2]), 1)
    assert pool.size == 1  # the failed add changed nothing


def test_labels_validation():
    with pytest.raises(FlexsampleError, match="outside the 2 classes"):
        Pool(np.array([0, 1, 2]), num_classes=2)
    with pytest.raises(FlexsampleError, match="integer"):
        Pool(np.array([0.5, 1.0]))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    seed=st.integers(0, 2**16),
)
def test_state_round_trip_and_invariants(labels, seed):
    labels = np.array(labels)
    rng = np.random.default_rng(seed)
    pool = Pool(labels, num_classes=5)
    order = rng.permutation(len(labels))
    cuts = np.sort(rng.integers(0, len(labels) + 1, size=3))
    for step, part in enumerate(np.split(order, cuts)):
        before = pool.size
        pool.add(part, step)
        assert pool.size == before + len(part)  # only grows
        assert (pool.subset_counts() + pool.remaining_counts() == pool.total_counts()).all()
    clone = Pool(labels, num_classes=5)
    clone.load_state_dict(pool.state_dict())
    assert np.array_equal(clone.entered, pool.entered)
    for a, b in zip(clone.history(), pool.history(), strict=True):
        assert np.array_equal(a, b)


def test_state_for_another_split_is_refused():
    pool = Pool(np.zeros(4, dtype=int))
    with pytest.raises(FlexsampleError, match="holds 4 samples, this split has 3"):
        Pool(np.zeros(3, dtype=int)).load_state_dict(pool.state_dict())
