"""BADGE's k-means++ seedings (torch) against NumPy references written here from the rules:
pick for pick on the same random stream, and in distribution (chi-square on the first drawn
pick over many seeds against the probabilities the rule gives)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.cluster import kmeans_plusplus

from flexsample.engine.errors import FlexsampleError
from flexsample.estimators.diversity import kmeanspp_seeding


# -- references (NumPy, float64, one full distance pass per pick) --------------------------
def sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float64) - c.astype(np.float64)) ** 2).sum(-1)


def authors_reference(x: np.ndarray, k: int, random_state: int) -> list[int]:
    """JordanAsh/badge `init_centers`: the largest-norm row, then rows drawn with probability
    proportional to the squared distance to the nearest chosen row (a chosen row has
    distance 0). One uniform per pick from RandomState(random_state): the row where the
    cumulative sum first exceeds u * total."""
    rs = np.random.RandomState(random_state)
    u = rs.uniform(size=k - 1)
    picks = [int(np.argmax(np.linalg.norm(x.astype(np.float64), axis=1)))]
    d2 = sqdist(x, x[picks[0]])
    for t in range(1, k):
        d2[picks] = 0.0
        cum = np.cumsum(d2)
        i = min(int(np.searchsorted(cum, u[t - 1] * cum[-1], side="right")), len(x) - 1)
        picks.append(i)
        d2 = np.minimum(d2, sqdist(x, x[i]))
    return picks


def greedy_reference(x: np.ndarray, k: int, random_state: int) -> list[int]:
    """Greedy k-means++ (Arthur & Vassilvitskii's local trials, scikit-learn's draws): a
    uniform first row, then 2 + int(ln k) D^2 draws per centre, the one leaving the smallest
    total squared distance kept."""
    rs = np.random.RandomState(random_state)
    n = len(x)
    w = np.ones(n, np.float32)
    picks = [int(rs.choice(n, p=w / w.sum()))]
    trials = 2 + int(np.log(k))
    d2 = sqdist(x, x[picks[0]])
    for _ in range(1, k):
        cum = np.cumsum(d2)
        ids = np.minimum(np.searchsorted(cum, rs.uniform(size=trials) * cum[-1]), n - 1)
        cand = np.minimum(d2[None, :], np.stack([sqdist(x, x[i]) for i in ids]))
        best = int(np.argmin(cand.sum(1)))
        picks.append(int(ids[best]))
        d2 = cand[best]
    return picks


def data(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((5, d)) * 3
    return (means[rng.integers(0, 5, n)] + rng.standard_normal((n, d))).astype(np.float32)


# -- pick for pick ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_authors_pick_for_pick(seed: int) -> None:
    x = data(seed, 300 + 50 * seed, [3, 16, 64, 130][seed])
    got = kmeanspp_seeding(x, 40, 1000 + seed, "authors")
    assert got.tolist() == authors_reference(x, 40, 1000 + seed)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_pick_for_pick_and_as_scikit_learn(seed: int) -> None:
    x = data(10 + seed, 250 + 40 * seed, [2, 16, 64, 100][seed])
    got = kmeanspp_seeding(x, 30, 77 + seed, "greedy")
    assert got.tolist() == greedy_reference(x, 30, 77 + seed)
    _, ids = kmeans_plusplus(x, n_clusters=30, random_state=77 + seed)
    assert got.tolist() == ids.tolist()


def test_factored_rows_equal_the_outer_products() -> None:
    """With a, g the rows are a_i (x) g_i: the same picks as on the built embedding."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 4)).astype(np.float32)
    g = rng.standard_normal((200, 9)).astype(np.float32)
    emb = (a[:, :, None] * g[:, None, :]).reshape(200, 36)
    for rule, ref in (("authors", authors_reference), ("greedy", greedy_reference)):
        got = kmeanspp_seeding(torch.from_numpy(g), 25, 5, rule, a=torch.from_numpy(a))
        assert got.tolist() == ref(emb, 25, 5)


def test_coinciding_rows_end_with_distinct_largest_norm_rows() -> None:
    x = np.repeat(np.array([[1.0, 0.0], [0.0, 3.0]], np.float32), [4, 3], axis=0)
    for rule in ("authors", "greedy"):
        got = kmeanspp_seeding(x, 5, 0, rule)
        assert len(set(got.tolist())) == 5
        assert {int(x[i, 1] > 0) for i in got[:2]} == {0, 1}  # both distinct points first
    got = kmeanspp_seeding(x, 5, 0, "authors")
    assert got[0] == 4 and got[2:].tolist() == [5, 6, 0]  # largest norm, lowest index first


def test_bad_arguments() -> None:
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(FlexsampleError, match="k must be in"):
        kmeanspp_seeding(x, 5, 0)
    with pytest.raises(FlexsampleError, match="accepted: authors, greedy"):
        kmeanspp_seeding(x, 2, 0, "plain")
    assert kmeanspp_seeding(x, 0, 0).shape == (0,)


# -- in distribution -------------------------------------------------------------------------
SMALL = np.array([[0, 0], [1, 0], [0, 2], [3, 1], [-2, -1], [1, 4], [-1, 3], [4, -2]], np.float32)
SEEDS = 1500


def counts(rule: str, position: int) -> np.ndarray:
    out = np.zeros(len(SMALL))
    g = torch.from_numpy(SMALL)
    for s in range(SEEDS):
        out[kmeanspp_seeding(g, position + 1, s, rule, n_trials=2)[position]] += 1
    return out


def authors_second_pick() -> np.ndarray:
    first = int(np.argmax(np.linalg.norm(SMALL, axis=1)))
    d2 = sqdist(SMALL, SMALL[first])
    return d2 / d2.sum()


def greedy_second_pick() -> np.ndarray:
    """Exact law of the second centre: a uniform first row f; two D^2 trials from f, the one
    with the smaller total distance kept (the first on equal totals)."""
    n = len(SMALL)
    d = np.stack([sqdist(SMALL, SMALL[j]) for j in range(n)])
    out = np.zeros(n)
    for f in range(n):
        p = d[f] / d[f].sum()
        pot = np.minimum(d[f][None, :], d).sum(1)
        for i in range(n):
            for j in range(n):
                out[i if pot[i] <= pot[j] else j] += p[i] * p[j] / n
    return out


def test_authors_first_draw_follows_d2() -> None:
    seen = counts("authors", 1)
    want = authors_second_pick()
    assert stats.chisquare(seen[want > 0], SEEDS * want[want > 0]).pvalue > 1e-3
    assert seen[want == 0].sum() == 0
    # the test has power: plain distance (D^1) sampling is rejected
    d1 = np.sqrt(want)
    d1 /= d1.sum()
    assert stats.chisquare(seen[want > 0], SEEDS * d1[want > 0]).pvalue < 1e-6


def test_greedy_first_two_picks_follow_their_law() -> None:
    first = counts("greedy", 0)
    assert stats.chisquare(first).pvalue > 1e-3  # uniform
    seen = counts("greedy", 1)
    want = greedy_second_pick()
    assert math.isclose(want.sum(), 1.0)
    live = want > 0
    assert stats.chisquare(seen[live], SEEDS * want[live]).pvalue > 1e-3
    d2 = np.mean(
        [sqdist(SMALL, SMALL[f]) / sqdist(SMALL, SMALL[f]).sum() for f in range(len(SMALL))], axis=0
    )  # one trial: plain D^2, not greedy
    assert stats.chisquare(seen[live], SEEDS * d2[live] / d2[live].sum()).pvalue < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule", ["authors", "greedy"])
def test_cuda_equals_cpu(rule: str) -> None:
    x = data(5, 2000, 64)
    cpu = kmeanspp_seeding(x, 50, 9, rule)
    assert kmeanspp_seeding(x, 50, 9, rule, device="cuda").tolist() == cpu.tolist()
