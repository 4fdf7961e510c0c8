"""Every built-in estimator against a direct computation, plus composition and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import EstimatorError, FlexsampleError, UnknownNameError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.registries import ESTIMATORS, list_estimators
from flexsample.engine.scoring import score_candidates
from flexsample.estimators import (
    CombinedEstimator,
    build_estimator,
    knn_density,
    normalized_ranks,
)
from flexsample.estimators import functional as F
from flexsample.training.models import adapt_model

BUILTINS = [
    "random",
    "entropy",
    "margin",
    "least-confidence",
    "mcdropout",
    "density",
    "info-density",
    "prototype-cosine",
]


def tiny_model(num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    emb = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
    return adapt_model(emb, nn.Linear(16, num_classes), 0.5).eval()


@pytest.fixture
def setup():
    n = 80
    model = tiny_model()
    x = torch.randn(n, 10)
    labels = np.arange(n) % 4
    subset = np.arange(0, n, 4)
    cand = np.setdiff1d(np.arange(n), subset)

    def ctx(**kw) -> ScoringContext:
        return ScoringContext(
            model,
            tensor_inputs(x),
            labels,
            seed=0,
            step=1,
            batch_size=16,
            subset_indices=subset,
            **kw,
        )

    with torch.inference_mode():
        feats = model.embed(x).numpy().astype(np.float64)
        probs = torch.softmax(model.head(model.embed(x)), -1).numpy().astype(np.float64)
    return {
        "ctx": ctx,
        "cand": cand,
        "labels": labels,
        "subset": subset,
        "feats": feats,
        "probs": probs,
        "n": n,
    }


def test_all_builtins_registered_with_a_description() -> None:
    assert set(BUILTINS) <= set(list_estimators())
    rows = {name: doc for name, doc, _ in ESTIMATORS.describe()}
    for name in BUILTINS:
        assert rows[name], name


@pytest.mark.parametrize("name", BUILTINS)
def test_each_builtin_scores_validly(setup, name: str) -> None:
    # only the estimators that declare mc_samples take it (an unknown option is refused)
    opts = {"mc_samples": 4} if "mc_samples" in ESTIMATORS.options(name).model_fields else {}
    est = build_estimator(name, **opts)
    scores = score_candidates(est, setup["ctx"](), setup["cand"])
    assert scores.shape == (len(setup["cand"]),) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", ["entropy", "margin", "least-confidence"])
def test_single_pass_estimators_match_the_formula(setup, name: str) -> None:
    got = score_candidates(build_estimator(name), setup["ctx"](), setup["cand"])
    want = F.PROB_SCORES[name](torch.from_numpy(setup["probs"][setup["cand"]])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("mc_score", list(F.MC_SCORES))
def test_mcdropout_uses_the_chosen_reduction(setup, mc_score: str) -> None:
    est = build_estimator("mcdropout", mc_samples=5, mc_score=mc_score)
    got = score_candidates(est, setup["ctx"](), setup["cand"])
    want = setup["ctx"]().reduce_mc(setup["cand"], 5, F.MC_SCORES[mc_score])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mc_samples": 1}, "option 'mc_samples' = 1"),
        ({"mc_samples": 2.5}, "option 'mc_samples' = 2.5"),
        ({"mc_score": "nope"}, "option 'mc_score' = 'nope'.*bald, entropy, variation-ratio, std"),
        ({"mc_mode": "half"}, "option 'mc_mode' = 'half'.*head, full"),
    ],
)
def test_mc_options_are_checked_at_build_time(options, match) -> None:
    with pytest.raises(FlexsampleError, match=match):
        build_estimator("mcdropout", **options)
    with pytest.raises(FlexsampleError, match=match):
        build_estimator("info-density", **options)


def brute_density(feats: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    sims = f[rows] @ f.T
    sims[np.arange(len(rows)), rows] = -np.inf  # not itself
    return np.sort(sims, axis=1)[:, ::-1][:, :k].mean(axis=1)


def test_density_matches_brute_force(setup) -> None:
    got = score_candidates(build_estimator("density", knn=7), setup["ctx"](), setup["cand"])
    np.testing.assert_allclose(got, brute_density(setup["feats"], setup["cand"], 7), atol=1e-5)


def test_knn_density_edge_cases() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 5)).astype(np.float32)
    dup = np.concatenate([f, f[:3], f[:3]])  # exact duplicates: self may not come first
    np.testing.assert_allclose(
        knn_density(dup, k=4), brute_density(dup, np.arange(36), 4), atol=1e-5
    )
    np.testing.assert_allclose(
        knn_density(f[:3], k=10), brute_density(f[:3], np.arange(3), 2), atol=1e-5
    )  # fewer rows than k: all the others
    assert knn_density(f[:1], k=3).tolist() == [0.0]
    assert len(knn_density(f, np.zeros(0, np.int64), k=3)) == 0
    zero = np.zeros((4, 5), np.float32)
    assert np.isfinite(knn_density(zero, k=2)).all()


def test_density_ivf_path_is_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(8, 16))
    f = (centers[rng.integers(0, 8, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    rows = np.arange(0, 3000, 7)
    exact = knn_density(f, rows, k=5)
    approx = knn_density(f, rows, k=5, ivf_threshold=100)
    assert np.mean(np.isclose(exact, approx, atol=1e-6)) > 0.9
    assert np.corrcoef(exact, approx)[0, 1] > 0.99


def test_info_density_is_uncertainty_times_scaled_density(setup) -> None:
    ctx = setup["ctx"]
    cand = setup["cand"]
    u = score_candidates(build_estimator("mcdropout", mc_samples=4), ctx(), cand)
    rho = brute_density(setup["feats"], cand, 10)
    for beta in (0.0, 1.0, 2.5):
        est = build_estimator("info-density", mc_samples=4, density_beta=beta)
        got = score_candidates(est, ctx(), cand)
        np.testing.assert_allclose(got, u * ((1 + rho) / 2) ** beta, rtol=1e-5, atol=1e-9)
    with pytest.raises(FlexsampleError, match="option 'density_beta' = -1.0"):
        build_estimator("info-density", density_beta=-1.0)


def reference_prototype_cosine(feats, labels, subset, cand) -> np.ndarray:
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    out = []
    for i in cand:
        members = [j for j in subset if labels[j] == labels[i]] or [
            j for j in cand if labels[j] == labels[i]
        ]
        proto = f[members].mean(axis=0)
        out.append(f[i] @ proto / np.linalg.norm(proto))
    return np.array(out)


def test_prototype_cosine_is_cosine_to_the_subset_prototype(setup) -> None:
    got = score_candidates(build_estimator("prototype-cosine"), setup["ctx"](), setup["cand"])
    want = reference_prototype_cosine(
        setup["feats"], setup["labels"], setup["subset"], setup["cand"]
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_prototype_cosine_falls_back_to_candidates_for_a_class_missing_from_the_subset(
    setup,
) -> None:
    labels, n = setup["labels"], setup["n"]
    subset = np.array([i for i in range(0, n, 4) if labels[i] != 2])
    cand = np.setdiff1d(np.arange(n), subset)
    ctx = setup["ctx"]()
    ctx.subset_indices = subset
    got = score_candidates(build_estimator("prototype-cosine"), ctx, cand)
    want = reference_prototype_cosine(setup["feats"], labels, subset, cand)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_old_name_typicality_still_scores_as_prototype_cosine(setup) -> None:
    with pytest.warns(FutureWarning, match="'typicality' is deprecated.*'prototype-cosine'"):
        old = build_estimator("typicality")
    got = score_candidates(old, setup["ctx"](), setup["cand"])
    want = reference_prototype_cosine(
        setup["feats"], setup["labels"], setup["subset"], setup["cand"]
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_random_is_seeded_by_seed_and_step(setup) -> None:
    est = build_estimator("random")
    a = score_candidates(est, setup["ctx"](), setup["cand"])
    np.testing.assert_array_equal(a, score_candidates(est, setup["ctx"](), setup["cand"]))


# -- composition -----------------------------------------------------------------------------


def test_normalized_ranks_with_ties() -> None:
    np.testing.assert_allclose(
        normalized_ranks(np.array([3.0, 1.0, 2.0, 2.0])), [1.0, 0.25, 0.625, 0.625]
    )
    assert len(normalized_ranks(np.zeros(0))) == 0


@pytest.mark.parametrize("combine", ["rank-mean", "rank-product"])
def test_combination_of_ranks(setup, combine: str) -> None:
    ctx, cand = setup["ctx"], setup["cand"]
    est = build_estimator("mcdropout+density", combine=combine, mc_samples=4, knn=5)
    assert isinstance(est, CombinedEstimator)
    assert est.name == "mcdropout+density" and est.needs == {"mc", "features"}
    a = normalized_ranks(score_candidates(build_estimator("mcdropout", mc_samples=4), ctx(), cand))
    b = normalized_ranks(score_candidates(build_estimator("density", knn=5), ctx(), cand))
    want = (a + b) / 2 if combine == "rank-mean" else a * b
    np.testing.assert_allclose(score_candidates(est, ctx(), cand), want)


def test_build_estimator_parsing_and_options() -> None:
    est = build_estimator(" mcdropout + entropy ", mc_samples=7, knn=None, combine=None)
    assert est.name == "mcdropout+entropy"
    assert est.parts[0].mc_samples == 7 and est.combine == "rank-mean"
    # options no part declares are refused now (they used to be dropped silently)
    with pytest.raises(FlexsampleError, match="has no option 'unrelated'"):
        build_estimator(" mcdropout + entropy ", mc_samples=7, unrelated="x")
    assert build_estimator("density", knn=None).knn == 10  # None = the estimator's default
    assert build_estimator("mcdropout").mc_samples == 20
    with pytest.raises(FlexsampleError, match="'mcdropout' has no option 'combine'"):
        build_estimator("mcdropout", combine="rank-product")  # combine is for '+' specs
    three = build_estimator("entropy+margin+random")
    assert [p.name for p in three.parts] == ["entropy", "margin", "random"]
    assert three.state_dict() == {"parts": [{}, {}, {}]}
    three.load_state_dict(three.state_dict())


@pytest.mark.parametrize(
    "spec, options, error, match",
    [
        ("nope", {}, UnknownNameError, "unknown estimator 'nope'; available: .*mcdropout"),
        ("mcdropout+nope", {}, UnknownNameError, "unknown estimator 'nope'"),
        ("mcdropout++density", {}, FlexsampleError, "empty name"),
        ("entropy+entropy", {}, FlexsampleError, "twice"),
        ("entropy+margin", {"combine": "max"}, FlexsampleError, "rank-mean, rank-product"),
        ("density", {"knn": 0}, FlexsampleError, "knn"),
    ],
)
def test_build_estimator_errors(spec, options, error, match) -> None:
    with pytest.raises(error, match=match):
        build_estimator(spec, **options)


def test_a_part_reading_undeclared_data_is_named(setup) -> None:
    class Sneaky(Estimator):
        name = "sneaky-part"
        needs = frozenset({"probs"})

        def score(self, ctx, candidates):
            return ctx.features(candidates)[:, 0]

    est = CombinedEstimator([build_estimator("entropy"), Sneaky()])
    with pytest.raises(EstimatorError, match="'sneaky-part' reads 'features'"):
        score_candidates(est, setup["ctx"](), setup["cand"])


def test_a_part_returning_bad_scores_is_named(setup) -> None:
    class Bad(Estimator):
        name = "bad-part"

        def score(self, ctx, candidates):
            return np.full(len(candidates), np.nan)

    with pytest.raises(EstimatorError, match="'bad-part' returned .* non-finite"):
        score_candidates(
            CombinedEstimator([Bad(), build_estimator("random")]), setup["ctx"](), setup["cand"]
        )


# -- through the CLI, on the embedded dataset ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["info-density", "prototype-cosine+margin"])
def test_runs_through_the_cli(cli, tmp_path, spec: str) -> None:
    from tests.conftest import TINY

    # --mc-samples only with a spec that has an MC part (it is refused otherwise)
    mc = ["--mc-samples", "4"] if spec == "info-density" else []
    res = cli("run", *TINY, "--out", tmp_path / "r", "--estimator", spec, *mc)
    assert res.exit_code == 0, res.output


def test_torch_search_fallback_matches_faiss() -> None:
    """The path taken on a CUDA model when faiss is CPU-only, checked here on the CPU."""
    from flexsample.estimators.density import _torch_search, knn_search, l2_normalize

    rng = np.random.default_rng(3)
    db = l2_normalize(rng.normal(size=(500, 24)))
    sims_f, ids_f = knn_search(db, db[:60], 6)
    sims_t, ids_t = _torch_search(db, db[:60], 6, torch.device("cpu"), chunk=16)
    np.testing.assert_allclose(sims_t, sims_f, atol=1e-5)
    assert [set(a) for a in ids_t.tolist()] == [set(a) for a in ids_f.tolist()]
