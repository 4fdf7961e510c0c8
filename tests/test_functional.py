"""Uncertainty formulas: hand-computed cases and an independent numpy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flexsample.estimators import functional as F

LN2 = math.log(2.0)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# -- hand-computed ---------------------------------------------------------------------------


def test_single_pass_measures_by_hand() -> None:
    p = t([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]])
    h3 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(F.entropy(p).numpy(), [LN2, 0.0, h3], atol=1e-12)
    np.testing.assert_allclose(F.margin(p).numpy(), [1.0, 0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(F.least_confidence(p).numpy(), [0.5, 0.0, 0.3], atol=1e-12)


def test_margin_ignores_class_order_and_handles_one_class() -> None:
    np.testing.assert_allclose(F.margin(t([[0.1, 0.2, 0.7]])).numpy(), [0.5])
    np.testing.assert_allclose(F.margin(t([[1.0]])).numpy(), [0.0])


def test_mc_measures_by_hand() -> None:
    # sample 0: two confident, contradicting draws; sample 1: two identical uncertain draws
    mc = t([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])  # (T=2, N=2, C=2)
    np.testing.assert_allclose(F.bald(mc).numpy(), [LN2, 0.0], atol=1e-12)
    np.testing.assert_allclose(F.predictive_entropy(mc).numpy(), [LN2, LN2], atol=1e-12)
    np.testing.assert_allclose(F.mean_std(mc).numpy(), [0.5, 0.0], atol=1e-12)
    # argmax ties inside a draw go to class 0: sample 1 votes 0, 0
    np.testing.assert_allclose(F.variation_ratio(mc).numpy(), [0.5, 0.0], atol=1e-12)


def test_variation_ratio_three_draws() -> None:
    mc = t([[[0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1]], [[0.5, 0.4, 0.1]]])  # votes 0, 1, 0
    np.testing.assert_allclose(F.variation_ratio(mc).numpy(), [1.0 - 2.0 / 3.0])


# -- an independent, straightforward implementation ------------------------------------------


def np_entropy(p: np.ndarray) -> float:
    return float(-sum(x * math.log(x) for x in p if x > 0))


def reference_single(p: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"entropy": [], "margin": [], "least-confidence": []}
    for row in p:
        s = sorted(row, reverse=True)
        out["entropy"].append(np_entropy(row))
        out["margin"].append(1.0 - (s[0] - s[1]))
        out["least-confidence"].append(1.0 - s[0])
    return {k: np.array(v) for k, v in out.items()}


def reference_mc(mc: np.ndarray) -> dict[str, np.ndarray]:
    t_, n, c = mc.shape
    out: dict[str, list[float]] = {"bald": [], "entropy": [], "variation-ratio": [], "std": []}
    for i in range(n):
        draws = mc[:, i, :]
        mean = draws.sum(axis=0) / t_
        out["bald"].append(np_entropy(mean) - sum(np_entropy(d) for d in draws) / t_)
        out["entropy"].append(np_entropy(mean))
        votes = [0] * c
        for d in draws:
            votes[int(np.argmax(d))] += 1
        out["variation-ratio"].append(1.0 - max(votes) / t_)
        stds = [math.sqrt(sum((d[k] - mean[k]) ** 2 for d in draws) / t_) for k in range(c)]
        out["std"].append(sum(stds) / c)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_reference_on_random_probabilities(seed: int, dtype) -> None:
    rng = np.random.default_rng(seed)
    alpha = rng.choice([0.1, 1.0, 5.0])  # peaked to flat
    mc = rng.dirichlet(np.full(6, alpha), size=(9, 40)).astype(dtype)  # (T, N, C)
    ref = reference_mc(mc.astype(np.float64))
    for name, fn in F.MC_SCORES.items():
        got = fn(torch.from_numpy(mc))
        assert got.dtype == torch.float64 and got.shape == (40,)
        tol = 1e-6 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(got.numpy(), ref[name], atol=tol, err_msg=name)
    single = mc[0]
    ref1 = reference_single(single.astype(np.float64))
    for name, fn in F.PROB_SCORES.items():
        got = fn(torch.from_numpy(single))
        np.testing.assert_allclose(got.numpy(), ref1[name], atol=1e-6, err_msg=name)


def test_bald_bounds_and_batch_independence() -> None:
    rng = np.random.default_rng(5)
    mc = torch.from_numpy(rng.dirichlet(np.ones(4), size=(20, 30)))
    b = F.bald(mc)
    assert (b >= 0).all() and (b <= F.predictive_entropy(mc) + 1e-12).all()
    np.testing.assert_allclose(torch.cat([F.bald(mc[:, :7]), F.bald(mc[:, 7:])]).numpy(), b.numpy())
    for fn in (*F.MC_SCORES.values(),):
        assert torch.isfinite(fn(mc)).all()


def test_zero_probabilities_are_finite() -> None:
    mc = torch.zeros(3, 2, 4, dtype=torch.float64)
    mc[..., 0] = 1.0
    for fn in (*F.MC_SCORES.values(), *F.PROB_SCORES.values()):
        assert torch.isfinite(fn(mc if fn in F.MC_SCORES.values() else mc[0])).all()
