"""Core-set and BADGE against independent references (brute force, autograd, sklearn)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.cluster import kmeans_plusplus
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import OptionError
from flexsample.engine.registries import ESTIMATORS
from flexsample.engine.scoring import score_candidates, select_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators.diversity import (
    badge_seed,
    gradient_embedding,
    kcenter_greedy,
    kmeanspp_distinct,
)
from flexsample.training.models import adapt_model


# -- independent references ----------------------------------------------------------------
def brute_kcenter(x: np.ndarray, k: int, centers=None, first=None) -> np.ndarray:
    """Plain k-center greedy: full float32 distance pass per center, min-update, argmax."""
    d = np.full(len(x), np.inf, dtype=np.float32)
    picks: list[int] = []
    if centers is not None and len(centers):
        for c in centers:
            d = np.minimum(d, ((x - c) ** 2).sum(axis=1))
    else:
        picks.append(first)
        d = ((x - x[first]) ** 2).sum(axis=1)
    d[picks] = -np.inf
    while len(picks) < k:
        i = int(np.argmax(d))  # first maximum = lowest index on ties
        picks.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(axis=1))
        d[picks] = -np.inf
    return np.asarray(picks)


def autograd_embedding(head: nn.Linear, h: torch.Tensor) -> np.ndarray:
    """Per sample: d CE(head(h), argmax) / d (weight [, bias]) by backward passes."""
    rows = []
    for hi in h:
        head.zero_grad()
        logits = head(hi[None])
        y = logits.argmax(dim=1)
        nn.functional.cross_entropy(logits, y).backward()
        parts = [head.weight.grad.flatten()]
        if head.bias is not None:
            parts.append(head.bias.grad.flatten())
        rows.append(torch.cat(parts).clone())
    return torch.stack(rows).numpy()


def tiny_model(num_classes: int = 4, seed: int = 0, bias: bool = True):
    torch.manual_seed(seed)
    emb = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
    return adapt_model(emb, nn.Linear(16, num_classes, bias=bias), 0.5).eval()


def make_ctx(model, x, subset=None, seed: int = 0, step: int = 1) -> ScoringContext:
    labels = np.arange(len(x)) % model.head.out_features
    return ScoringContext(
        model,
        tensor_inputs(x),
        labels,
        seed=seed,
        step=step,
        batch_size=16,
        subset_indices=subset,
    )


@pytest.fixture
def pool():
    n = 120
    model = tiny_model()
    x = torch.randn(n, 10, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        feats = model.embed(x).numpy()
    subset = np.arange(0, n, 5)
    cand = np.setdiff1d(np.arange(n), subset)
    return {"model": model, "x": x, "feats": feats, "subset": subset, "cand": cand}


# -- core-set: the greedy -------------------------------------------------------------------
def test_registered_with_descriptions() -> None:
    rows = {name: doc for name, doc, _ in ESTIMATORS.describe()}
    assert rows["coreset"] and rows["badge"]


def pad(x: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero columns change no distance; 16+ columns take the lazy path, fewer the dense one."""
    return np.pad(x, ((0, 0), (0, max(0, pad_to - x.shape[1])))).astype(np.float32)


@pytest.mark.parametrize("width", [1, 16])
def test_hand_computed_1d(width: int) -> None:
    x = pad(np.array([[0.0], [1.0], [2.0], [10.0], [11.0]]), width)
    # from 0: d^2 = 0 1 4 100 121 -> 11; then 0 1 4 1 0 -> 2; then 0 1 0 1 0 -> tie, lowest: 1
    np.testing.assert_array_equal(kcenter_greedy(x, 4, first=0), [0, 4, 2, 1])
    # subset {5}: 25 16 9 25 36 -> 11; min with d(.,11): 25 16 9 1 0 -> 0; then 0 1 4 1 0 -> 2
    np.testing.assert_array_equal(kcenter_greedy(x, 3, pad(np.array([[5.0]]), width)), [4, 0, 2])


@pytest.mark.parametrize("width", [2, 16])
def test_hand_computed_2d(width: int) -> None:
    # the centre first; every corner is then 0.5 away (a tie: lowest index), and so on
    x = pad(np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0.5, 0.5]]), width)
    np.testing.assert_array_equal(kcenter_greedy(x, 5, first=4), [4, 0, 1, 2, 3])
    # from the corner (0, 0): the far corner (1, 1), then (0, 1) and (1, 0) tie at 1
    np.testing.assert_array_equal(kcenter_greedy(x, 3, first=0), [0, 3, 1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_subset", [False, True])
def test_greedy_equals_brute_force(seed: int, with_subset: bool) -> None:
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(20, 600)), [3, 20, 64][seed % 3] + seed // 3
    kind = seed % 3
    if kind == 0:
        x = rng.standard_normal((n, d))
    elif kind == 1:  # integer grid: many exact ties and duplicate rows
        x = rng.integers(0, 3, (n, d))
    else:  # rows of very different scales
        x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    x = x.astype(np.float32)
    k = int(rng.integers(1, n + 1))
    if with_subset:
        centers = (x[rng.choice(n, 7)] + rng.standard_normal((7, d))).astype(np.float32)
        got, want = kcenter_greedy(x, k, centers), brute_kcenter(x, k, centers)
    else:
        first = int(rng.integers(n))
        got, want = kcenter_greedy(x, k, first=first), brute_kcenter(x, k, first=first)
    np.testing.assert_array_equal(got, want)


def test_greedy_equals_brute_force_at_a_larger_size() -> None:
    rng = np.random.default_rng(7)
    means = rng.standard_normal((6, 128)) * 3
    x = (means[rng.integers(0, 6, 3000)] + rng.standard_normal((3000, 128))).astype(np.float32)
    np.testing.assert_array_equal(kcenter_greedy(x, 150, first=11), brute_kcenter(x, 150, first=11))
    np.testing.assert_array_equal(kcenter_greedy(x, 100, x[:40]), brute_kcenter(x, 100, x[:40]))


def test_greedy_rejects_bad_arguments() -> None:
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(FlexsampleError, match="k must be in"):
        kcenter_greedy(x, 5, first=0)
    with pytest.raises(FlexsampleError, match="first row"):
        kcenter_greedy(x, 2)
    assert kcenter_greedy(x, 0, first=0).shape == (0,)


def covering_radius(x: np.ndarray, picks) -> float:
    d = ((x[:, None, :] - x[None, list(picks), :]) ** 2).sum(axis=-1)
    return float(np.sqrt(d.min(axis=1).max()))


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(2, 8), st.integers(1, 3)),
        elements=st.integers(-20, 20).map(float),
    ),
    k=st.integers(1, 4),
    first=st.integers(0, 7),
)
def test_greedy_is_a_2_approximation(x: np.ndarray, k: int, first: int) -> None:
    n = len(x)
    k, first = min(k, n), first % n
    picks = kcenter_greedy(x, k, first=first)
    assert len(set(picks.tolist())) == k and ((0 <= picks) & (picks < n)).all()
    best = min(covering_radius(x, c) for c in itertools.combinations(range(n), k))
    assert covering_radius(x, picks) <= 2.0 * best + 1e-6


# -- core-set: the estimator on a real context ----------------------------------------------
def test_coreset_select_on_a_context(pool) -> None:
    est = build_estimator("coreset")
    ctx = make_ctx(pool["model"], pool["x"], pool["subset"])
    cand = pool["cand"][pool["cand"] % 4 == 1]  # one class's candidates, ascending
    got = select_candidates(est, ctx, cand, 9)
    f = pool["feats"]
    want = cand[brute_kcenter(f[cand], 9, f[pool["subset"]])]
    np.testing.assert_array_equal(got, want)


def test_coreset_without_subset_starts_from_the_seeded_draw(pool) -> None:
    est = build_estimator("coreset")
    cand = pool["cand"]
    picks = {}
    for step in (1, 2, 3):
        ctx = make_ctx(pool["model"], pool["x"], None, seed=5, step=step)
        first = int(np.random.default_rng([5, step, 0x5EED]).integers(len(cand)))  # ctx.rng
        want = cand[brute_kcenter(pool["feats"][cand], 12, first=first)]
        got = select_candidates(est, ctx, cand, 12)
        np.testing.assert_array_equal(got, want)
        again = select_candidates(est, make_ctx(pool["model"], pool["x"], None, 5, step), cand, 12)
        np.testing.assert_array_equal(got, again)  # deterministic for a fixed (seed, step)
        picks[step] = tuple(got)
    assert len(set(picks.values())) > 1  # the steps draw different first centers


def test_coreset_score_is_the_distance_to_the_nearest_subset_member(pool) -> None:
    ctx = make_ctx(pool["model"], pool["x"], pool["subset"])
    got = score_candidates(build_estimator("coreset"), ctx, pool["cand"])
    f = pool["feats"].astype(np.float64)
    d = np.sqrt(((f[pool["cand"], None] - f[None, pool["subset"]]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(got, d, rtol=1e-5, atol=1e-6)
    empty = make_ctx(pool["model"], pool["x"], None)
    assert (score_candidates(build_estimator("coreset"), empty, pool["cand"]) == 0).all()


# -- BADGE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_gradient_embedding_equals_autograd(bias: bool) -> None:
    torch.manual_seed(0)
    head = nn.Linear(6, 5, bias=bias)
    h = torch.randn(30, 6) * 2
    with torch.no_grad():
        p = torch.softmax(head(h), dim=1).numpy()
    got = gradient_embedding(h.numpy(), p, bias)
    want = autograd_embedding(head, h)
    assert got.shape == (30, 5 * 6 + (5 if bias else 0)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def class_seed(seed: int, step: int, cand: np.ndarray, classes: int) -> int:
    """The (seed, step, class) stream: `make_ctx` labels sample i with i % classes."""
    (cls,) = np.unique(cand % classes)
    return badge_seed(seed, step, int(cls))


@pytest.mark.parametrize("bias", [True, False])
def test_badge_greedy_equals_kmeanspp_on_the_autograd_embedding(pool, bias: bool) -> None:
    """seeding=greedy with bias columns: scikit-learn's kmeans_plusplus on the autograd
    embedding (weight and bias gradients), the same random stream."""
    model = tiny_model(bias=bias)
    cand = pool["cand"][pool["cand"] % 4 == 2]
    ctx = make_ctx(model, pool["x"], pool["subset"], seed=4, step=2)
    est = build_estimator("badge", badge_seeding="greedy", badge_bias=True)
    got = select_candidates(est, ctx, cand, 9)
    with torch.inference_mode():
        h = model.embed(pool["x"][torch.as_tensor(cand)])
    ref = autograd_embedding(model.head, h.clone())
    _, ids = kmeans_plusplus(ref, n_clusters=9, random_state=class_seed(4, 2, cand, 4))
    np.testing.assert_array_equal(got, cand[ids])
    assert len(set(got.tolist())) == 9 and np.isin(got, cand).all()


def authors_init_centers(x: np.ndarray, k: int, random_state: int) -> list[int]:
    """JordanAsh/badge `init_centers`, on a NumPy stream: the largest-norm row first, then D^2
    sampling (a chosen row has distance 0), one uniform per pick."""
    x = x.astype(np.float64)
    u = np.random.RandomState(random_state).uniform(size=k - 1)
    picks = [int(np.argmax(np.linalg.norm(x, axis=1)))]
    d2 = ((x - x[picks[0]]) ** 2).sum(1)
    for t in range(1, k):
        d2[picks] = 0.0
        cum = np.cumsum(d2)
        picks.append(int(np.searchsorted(cum, u[t - 1] * cum[-1], side="right")))
        d2 = np.minimum(d2, ((x - x[picks[-1]]) ** 2).sum(1))
    return picks


def test_badge_default_is_the_authors_seeding_on_the_weight_gradient(pool) -> None:
    model = tiny_model(bias=True)  # the head has a bias: its columns are left out by default
    cand = pool["cand"][pool["cand"] % 4 == 1]
    ctx = make_ctx(model, pool["x"], pool["subset"], seed=3, step=5)
    got = select_candidates(build_estimator("badge"), ctx, cand, 10)
    with torch.inference_mode():
        h = model.embed(pool["x"][torch.as_tensor(cand)])
    ref = autograd_embedding(model.head, h.clone())[:, : 4 * 16]  # weight gradient only
    want = authors_init_centers(ref, 10, class_seed(3, 5, cand, 4))
    np.testing.assert_array_equal(got, cand[want])
    # the largest-gradient-norm candidate comes first
    assert got[0] == cand[np.argmax(np.linalg.norm(ref, axis=1))]
    # bias columns on request: the same rule on the longer embedding
    both = select_candidates(build_estimator("badge", badge_bias=True), ctx, cand, 10)
    full = autograd_embedding(model.head, h.clone())
    np.testing.assert_array_equal(
        both, cand[authors_init_centers(full, 10, class_seed(3, 5, cand, 4))]
    )


def test_badge_options_are_validated() -> None:
    with pytest.raises(OptionError, match="badge_seeding"):
        build_estimator("badge", badge_seeding="plain")
    est = build_estimator("badge")
    assert est.badge_seeding == "authors" and est.badge_bias is False


@pytest.mark.parametrize("bias", [False, True])
def test_badge_score_is_the_embedding_norm(pool, bias: bool) -> None:
    model = pool["model"]  # its head has a bias: counted only with badge_bias
    ctx = make_ctx(model, pool["x"], pool["subset"])
    got = score_candidates(build_estimator("badge", badge_bias=bias), ctx, pool["cand"])
    with torch.inference_mode():
        h = model.embed(pool["x"][torch.as_tensor(pool["cand"])])
    emb = autograd_embedding(model.head, h.clone()).astype(np.float64)
    want = np.linalg.norm(emb if bias else emb[:, : 4 * 16], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_badge_is_deterministic_per_step(pool) -> None:
    cand = pool["cand"]

    def pick(seed: int, step: int, seeding: str = "greedy") -> tuple[int, ...]:
        ctx = make_ctx(pool["model"], pool["x"], pool["subset"], seed=seed, step=step)
        est = build_estimator("badge", badge_seeding=seeding)
        return tuple(select_candidates(est, ctx, cand, 10))

    assert pick(1, 1) == pick(1, 1) and pick(1, 1, "authors") == pick(1, 1, "authors")
    assert len({pick(1, 1), pick(1, 2), pick(2, 1)}) > 1
    assert badge_seed(1, 1) != badge_seed(1, 2) and 0 <= badge_seed(1, 1) < 2**32
    assert badge_seed(1, 1, 0) != badge_seed(1, 1, 1)  # each class its own stream


def test_kmeanspp_repeats_are_replaced_by_distinct_rows() -> None:
    emb = np.zeros((8, 3), np.float32)  # every row alike: k-means++ can only repeat itself
    picks = kmeanspp_distinct(emb, 4, 0)
    assert len(set(picks.tolist())) == 4 and ((0 <= picks) & (picks < 8)).all()


def test_badge_memory_budget_is_one_clear_error(pool) -> None:
    ctx = make_ctx(pool["model"], pool["x"], pool["subset"])
    est = build_estimator("badge")
    est.badge_memory = 1000  # bytes: far below 96 candidates x ((4 + 16 + 1) x 4 + 5 x 8)
    with pytest.raises(FlexsampleError) as err:
        est.select(ctx, pool["cand"], 5)
    msg = str(err.value)
    assert "\n" not in msg and "badge" in msg and "accepted: at most 8 candidates" in msg
    with pytest.raises(FlexsampleError, match="badge_memory"):
        build_estimator("badge").__class__(badge_memory=0)


@pytest.mark.parametrize("spec", ["coreset+entropy", "badge+margin"])
def test_selectors_compose_by_score(pool, spec: str) -> None:
    ctx = make_ctx(pool["model"], pool["x"], pool["subset"])
    scores = score_candidates(build_estimator(spec), ctx, pool["cand"])
    assert scores.shape == (len(pool["cand"]),) and np.isfinite(scores).all()
