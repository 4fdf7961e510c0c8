"""The selector contract and stochastic batch acquisition (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flexsample.engine import (
    Callback,
    Curriculum,
    Estimator,
    FlexsampleError,
    Pool,
    get_allocation,
    get_estimator,
    get_policy,
    tensor_inputs,
)
from flexsample.engine.errors import EstimatorError
from flexsample.engine.scoring import check_selection, is_selector
from flexsample.engine.selection import (
    ACQUISITIONS,
    acquisition_keys,
    segment_ranks,
    select_segments,
)
from tests.conftest import TINY, one_error_line
from tests.test_loop import ScriptedLearner

LABELS = np.repeat([0, 1, 2], [30, 12, 6])


class Spy(Callback):
    def __init__(self, seen):
        self.seen = seen

    def on_query(self, result):
        self.seen.append(result)


def make_loop(estimator, *, acquisition="topk", beta=1.0, batch=16, seed=0):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(len(LABELS), 4)), dtype=torch.float32)
    torch.manual_seed(0)
    loop = Curriculum(
        Pool(LABELS, 3),
        get_policy("linear"),
        get_allocation("proportional"),
        estimator,
        ScriptedLearner(np.linspace(0.1, 0.9, 6)),
        tensor_inputs(x),
        rounds=3,
        epochs_per_round=2,
        seed=seed,
        score_batch_size=batch,
        acquisition=acquisition,
        acquisition_beta=beta,
    )
    loop.start(np.concatenate([np.flatnonzero(LABELS == c)[:4] for c in range(3)]))
    return loop


# -- stochastic acquisition: the keys -----------------------------------------------------------


def one_class(scores):
    scores = np.asarray(scores, dtype=np.float64)
    return np.arange(len(scores)), np.array([0, len(scores)])


def test_topk_keys_are_the_scores():
    s = np.array([0.3, 0.1, 0.7])
    cand, bounds = one_class(s)
    np.testing.assert_array_equal(
        acquisition_keys(s, cand, bounds, "topk", 1.0, seed=0, step=1, num_items=3), s
    )


def test_segment_ranks_are_per_class_with_ties_to_the_lower_position():
    s = np.array([0.5, 0.9, 0.5, 0.2, 0.8, 0.8])
    bounds = np.array([0, 3, 6])
    np.testing.assert_array_equal(segment_ranks(s, bounds), [2, 1, 3, 3, 1, 2])


@pytest.mark.parametrize(
    ("mode", "beta", "weights"),
    [
        ("power", 1.0, np.array([0.1, 0.2, 0.3, 0.4])),
        ("power", 2.0, np.array([0.1, 0.2, 0.3, 0.4]) ** 2),
        ("softmax", 3.0, np.exp(3.0 * np.array([0.1, 0.2, 0.3, 0.4]))),
        ("softrank", 1.0, 1.0 / np.array([4.0, 3.0, 2.0, 1.0])),
    ],
)
def test_single_picks_follow_the_acquisition_distribution(mode, beta, weights):
    """k = 1: over many (seed, step) the pick frequency is weight / sum (Kirsch et al. 2023)."""
    s = np.array([0.1, 0.2, 0.3, 0.4])
    cand, bounds = one_class(s)
    n = 4000
    picks = [
        int(np.argmax(acquisition_keys(s, cand, bounds, mode, beta, seed=i, step=3, num_items=4)))
        for i in range(n)
    ]
    freq = np.bincount(picks, minlength=4) / n
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.025)


def test_power_never_prefers_a_zero_score_to_a_positive_one():
    s = np.array([0.0, 1e-3, 0.0])
    cand, bounds = one_class(s)
    for seed in range(200):
        keys = acquisition_keys(s, cand, bounds, "power", 1.0, seed=seed, step=1, num_items=3)
        assert np.argmax(keys) == 1


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["power", "softmax"]),
    st.integers(0, 2**31),
    st.integers(0, 50),
    st.integers(1, 30),
)
def test_a_candidates_key_depends_on_its_index_not_on_the_others(mode, seed, step, n):
    """The noise comes from (seed, step, global index): order and company change nothing."""
    rng = np.random.default_rng(seed % 1000)
    cand = np.sort(rng.choice(200, size=n, replace=False))
    s = rng.random(n)
    keys = acquisition_keys(
        s, cand, np.array([0, n]), mode, 2.0, seed=seed, step=step, num_items=200
    )
    perm = rng.permutation(n)
    again = acquisition_keys(
        s[perm], cand[perm], np.array([0, n]), mode, 2.0, seed=seed, step=step, num_items=200
    )
    np.testing.assert_array_equal(keys[perm], again)
    alone = acquisition_keys(
        s[:1], cand[:1], np.array([0, 1]), mode, 2.0, seed=seed, step=step, num_items=200
    )
    assert alone[0] == keys[0]


def test_bad_acquisition_arguments_are_refused():
    s = np.array([0.1, 0.2])
    cand, bounds = one_class(s)
    with pytest.raises(FlexsampleError, match="unknown acquisition 'gumbel'; accepted: topk"):
        acquisition_keys(s, cand, bounds, "gumbel", 1.0, seed=0, step=0, num_items=2)
    with pytest.raises(FlexsampleError, match="acquisition_beta must be a finite number > 0"):
        acquisition_keys(s, cand, bounds, "power", 0.0, seed=0, step=0, num_items=2)


# -- stochastic acquisition through the loop ----------------------------------------------------


@pytest.mark.parametrize("mode", ACQUISITIONS)
def test_the_loop_picks_the_same_batch_whatever_the_score_batch_size(mode):
    def chosen(batch):
        loop = make_loop(get_estimator("entropy"), acquisition=mode, beta=2.0, batch=batch)
        loop.run()
        return [r.class_counts for r in loop.records], loop.pool.history()[0]

    counts, order = chosen(16)
    counts7, order7 = chosen(7)
    assert counts == counts7
    np.testing.assert_array_equal(order, order7)


def test_stochastic_acquisition_is_seeded_and_varies_with_the_seed():
    def history(mode, seed):
        loop = make_loop(get_estimator("entropy"), acquisition=mode, seed=seed)
        loop.run()
        return tuple(loop.pool.history()[0])

    assert history("power", 3) == history("power", 3)
    assert len({history("power", s) for s in range(4)}) > 1
    assert len({history("topk", s) for s in range(2)}) == 1  # entropy of a fixed model


def test_stochastic_acquisition_by_the_loop_equals_gumbel_top_k_of_its_scores():
    loop = make_loop(get_estimator("entropy"), acquisition="softmax", beta=5.0)
    seen = []
    loop.callbacks.append(Spy(seen))
    loop.run()
    r = seen[0]
    remaining_before = np.bincount(LABELS, minlength=3) - 4
    partial = np.flatnonzero((r.quotas > 0) & (r.quotas < remaining_before))
    sizes = np.zeros(3, np.int64)
    sizes[partial] = [int((LABELS[r.candidates] == c).sum()) for c in partial]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    keys = acquisition_keys(
        r.scores, r.candidates, bounds, "softmax", 5.0, seed=0, step=r.step, num_items=len(LABELS)
    )
    want = select_segments(r.candidates, keys, bounds, np.where(sizes > 0, r.quotas, 0))
    got = r.chosen[np.isin(r.chosen, r.candidates)]
    np.testing.assert_array_equal(np.sort(got), want)


# -- the selector contract ---------------------------------------------------------------------


class EveryOther(Estimator):
    """Picks every other candidate from the top; records what the engine asked."""

    name = "every-other"
    needs = frozenset({"labels"})

    def __init__(self, out=None):
        self.calls = []
        self.out = out

    def score(self, ctx, candidates):
        return np.zeros(len(candidates))

    def select(self, ctx, candidates, k):
        self.calls.append((ctx.labels[candidates].tolist(), k))
        if self.out is not None:
            return self.out(candidates, k)
        return candidates[::-1][::2][:k].copy()


def test_the_loop_asks_a_selector_once_per_partial_class_with_its_quota():
    est = EveryOther()
    assert is_selector(est) and not is_selector(get_estimator("entropy"))
    loop = make_loop(est)
    seen = []
    loop.callbacks.append(Spy(seen))
    loop.run()
    first = seen[0]
    for labels, k in est.calls[: len(np.flatnonzero(first.quotas))]:
        assert len(set(labels)) == 1  # one class per call
        assert 0 < k < len(labels)
        assert k == first.quotas[labels[0]]
    # what was chosen in the first query is exactly what the selector returned
    c0 = first.candidates[LABELS[first.candidates] == 0]
    picked = c0[::-1][::2][: first.quotas[0]]
    assert set(picked) <= set(first.chosen)
    # the recorded scores are the pick order: 1 for the first pick, 0 for the unpicked
    pos = np.searchsorted(first.candidates, picked)
    np.testing.assert_allclose(
        first.scores[pos], (len(picked) - np.arange(len(picked))) / len(picked)
    )
    assert (first.scores[~np.isin(first.candidates, first.chosen)] == 0).all()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (lambda c, k: list(c[:k]), "select returned list; expected a numpy integer array of"),
        (lambda c, k: c[:k].astype(float), "select returned dtype float64"),
        (lambda c, k: c[: k + 1], "select returned shape"),
        (lambda c, k: np.repeat(c[:1], k), "select returned a candidate twice"),
        (lambda c, k: np.r_[c[: k - 1], 10_000], "select returned 10000, which is not one of"),
    ],
)
def test_a_bad_selection_is_an_error_naming_the_estimator(out, message):
    loop = make_loop(EveryOther(out))
    with pytest.raises(EstimatorError, match="estimator 'every-other' " + message):
        loop.run()


def test_check_selection_accepts_any_integer_dtype():
    got = check_selection("x", np.array([5, 2], np.int32), np.array([1, 2, 5]), 2)
    assert got.dtype == np.int64 and got.tolist() == [5, 2]


def test_a_selector_refuses_stochastic_acquisition():
    with pytest.raises(FlexsampleError, match="acquisition power draws from per-sample scores"):
        make_loop(EveryOther(), acquisition="power")


def test_cli_acquisition_runs_and_bad_values_are_one_line(cli, tmp_path):
    res = cli(
        "run",
        *TINY,
        "--acquisition",
        "softrank",
        "--acquisition-beta",
        "2",
        "--out",
        tmp_path / "a",
    )
    assert res.exit_code == 0, res.output
    import json

    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["acquisition"] == "softrank" and cfg["acquisition_beta"] == 2.0
    line = one_error_line(cli("run", *TINY, "--acquisition", "gumbel", "--out", tmp_path / "b"))
    assert "--acquisition" in line and "topk" in line
    line = one_error_line(cli("run", *TINY, "--acquisition-beta", "0", "--out", tmp_path / "c"))
    assert "--acquisition-beta" in line and "0 < x <= 1000" in line
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
