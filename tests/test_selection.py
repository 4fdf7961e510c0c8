"""Per-class top-k under quotas, against a sort-based reference (both code paths)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.selection import select_per_class, select_segments, top_k


def reference(candidates, scores, labels, quotas) -> np.ndarray:
    """Sort each class by (score descending, global index ascending), take the quota."""
    chosen = []
    for c, q in enumerate(quotas):
        members = [(-scores[i], candidates[i]) for i in range(len(candidates)) if labels[i] == c]
        chosen += [idx for _, idx in sorted(members)[:q]]
    return np.array(sorted(chosen), dtype=np.int64)


@st.composite
def problems(draw, max_n: int = 300):
    n = draw(st.integers(0, max_n))
    num_classes = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    candidates = rng.choice(10 * n + 1, n, replace=False)
    if draw(st.booleans()):
        candidates = np.sort(candidates)
    levels = draw(st.sampled_from([3, 20, 0]))  # few distinct values: many ties
    scores = rng.integers(0, levels, n).astype(float) if levels else rng.normal(size=n)
    if draw(st.booleans()):
        labels = np.sort(rng.integers(0, num_classes, n))  # class-blocked input
    else:
        labels = rng.integers(0, num_classes, n)
    counts = np.bincount(labels, minlength=num_classes)
    frac = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    quotas = np.floor(counts * rng.random(num_classes) * frac + 0.5).astype(np.int64)
    return candidates, scores, labels, np.minimum(quotas, counts)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_matches_the_sort_reference(problem) -> None:
    got = select_per_class(*problem)
    np.testing.assert_array_equal(got, reference(*problem))


@settings(max_examples=150, deadline=None)
@given(problems())
def test_grouped_path_matches_the_reference(problem) -> None:
    """The loop's path: candidates grouped by class, ascending within each class."""
    cand, scores, labels, quotas = problem
    order = np.lexsort((cand, labels))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(quotas)))])
    got = select_segments(cand[order], scores[order], bounds, quotas)
    np.testing.assert_array_equal(got, reference(*problem))


def test_large_input_is_exact_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    labels = rng.integers(0, 5, n)
    scores = np.round(rng.random(n), 3)  # plenty of ties at every cut
    cand = rng.permutation(3 * n)[:n]
    counts = np.bincount(labels)
    quotas = np.array([10, 0, counts[2], 5000, counts[4] - 1])
    got = select_per_class(cand, scores, labels, quotas)
    np.testing.assert_array_equal(got, reference(cand, scores, labels, quotas))
    label_of = dict(zip(cand.tolist(), labels.tolist(), strict=True))
    chosen_labels = np.array([label_of[i] for i in got.tolist()])
    np.testing.assert_array_equal(np.bincount(chosen_labels, minlength=5), quotas)


def test_top_k_ties_go_to_the_lower_position() -> None:
    s = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0])
    assert top_k(s, 3).tolist() == [1, 2, 3]
    assert top_k(s, 0).tolist() == [] and top_k(s, 9).tolist() == list(range(6))


def test_result_does_not_depend_on_candidate_order() -> None:
    rng = np.random.default_rng(1)
    cand = np.arange(100, 400)
    scores = rng.integers(0, 4, 300).astype(float)
    labels = rng.integers(0, 3, 300)
    quotas = np.array([10, 20, 5])
    a = select_per_class(cand, scores, labels, quotas)
    perm = rng.permutation(300)
    b = select_per_class(cand[perm], scores[perm], labels[perm], quotas)
    np.testing.assert_array_equal(a, b)


def test_errors() -> None:
    cand, scores, labels = np.arange(6), np.arange(6.0), np.array([0, 0, 1, 1, 1, 2])
    with pytest.raises(FlexsampleError, match="quota 3 for class 0 exceeds its 2 candidates"):
        select_per_class(cand, scores, labels, np.array([3, 0, 0]))
    with pytest.raises(FlexsampleError, match=">= 0"):
        select_per_class(cand, scores, labels, np.array([-1, 0, 0]))
    with pytest.raises(FlexsampleError, match="outside the quota vector"):
        select_per_class(cand, scores, labels, np.array([1, 1]))
    with pytest.raises(FlexsampleError, match="same length"):
        select_per_class(cand, scores[:3], labels, np.array([1, 1, 1]))
    assert select_per_class(cand, scores, labels, np.zeros(3, np.int64)).tolist() == []
    empty = np.zeros(0, np.int64)
    assert select_per_class(empty, empty * 1.0, empty, np.zeros(2, np.int64)).tolist() == []


def test_segment_errors() -> None:
    cand, scores = np.arange(4), np.arange(4.0)
    with pytest.raises(FlexsampleError, match="bounds must hold C \\+ 1 offsets"):
        select_segments(cand, scores, np.array([0, 4]), np.array([1, 1]))
    with pytest.raises(FlexsampleError, match="quota 3 for class 1 exceeds its 2 candidates"):
        select_segments(cand, scores, np.array([0, 2, 4]), np.array([1, 3]))
