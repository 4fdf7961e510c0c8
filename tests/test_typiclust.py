"""TypiClust against brute-force NumPy references (the paper's text, and the authors' code:
avihu111/TypiClust `TypiClust.select_samples`, written out here), and the `typicality` ->
`prototype-cosine` rename (a deprecated alias in the registry)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import FlexsampleError, RegistrationError, UnknownNameError
from flexsample.engine.registries import ESTIMATORS, list_estimators
from flexsample.engine.registry import Registry
from flexsample.engine.scoring import score_candidates, select_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators import typiclust as typiclust_mod
from flexsample.estimators.density import PrototypeCosineEstimator, l2_normalize
from flexsample.estimators.typiclust import (
    PAPER_TEXT,
    TypiClustEstimator,
    kmeans_labels,
    typicality,
    typiclust_picks,
)
from flexsample.training.models import adapt_model

DEPRECATION = (
    "estimator 'typicality' is deprecated: it is now called 'prototype-cosine' "
    "(TypiClust is 'typiclust')"
)

# -- references -------------------------------------------------------------------------------


def brute_typicality(x: np.ndarray, k: int, squared: bool = False) -> np.ndarray:
    """1 / (mean (squared) distance to the min(k, n-1) nearest other rows + 1e-8); 0 for a
    lone row."""
    f = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    d = d if squared else np.sqrt(d)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    if k <= 0:
        return np.zeros(len(x))
    return 1.0 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + 1e-8)


def brute_picks(
    x: np.ndarray, labelled: np.ndarray, k: int, assign: np.ndarray, knn: int
) -> list[int]:
    """The greedy rule written out loop by loop, on given cluster ids."""
    free = ~labelled.copy()
    picks = []
    for _ in range(k):
        best = None
        for c in sorted(set(assign[free].tolist())):
            key = (int((assign[~free] == c).sum()), -int((assign == c).sum()), c)
            best = key if best is None or key < best else best
        members = np.flatnonzero((assign == best[2]) & free)
        typ = brute_typicality(x[members], knn)
        pick = int(members[np.flatnonzero(typ == typ.max())[0]])
        picks.append(pick)
        free[pick] = False
    return picks


def blobs(seed: int = 0, per: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Four 2-D blobs far from the origin (features are compared after L2 normalisation,
    i.e. by angle): a dense core plus a loose halo each. Returns (points, centres)."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    pts = [
        np.concatenate([c + 0.15 * rng.normal(size=(per, 2)), c + 1.5 * rng.normal(size=(per, 2))])
        for c in centres
    ]
    return np.concatenate(pts), centres


# -- typicality -------------------------------------------------------------------------------


@pytest.fixture(params=["numpy", "faiss"])
def search_path(request, monkeypatch) -> str:
    """Both neighbour searches: the NumPy distance matrix (small sets) and FAISS (large)."""
    if request.param == "faiss":
        monkeypatch.setattr(typiclust_mod, "BRUTE_MAX", 0)
    return request.param


@pytest.mark.parametrize("n, k", [(30, 5), (30, 20), (6, 20), (2, 3)])
def test_typicality_matches_brute_force(search_path, n: int, k: int) -> None:
    x = np.random.default_rng(n + k).normal(size=(n, 7))
    np.testing.assert_allclose(typicality(x, k), brute_typicality(x, k), rtol=1e-6)


def test_typicality_edge_cases(search_path) -> None:
    x = np.random.default_rng(1).normal(size=(12, 4))
    dup = np.concatenate([x, x[:3], x[:3]])  # exact duplicates: self may not come first
    got = typicality(dup, 3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, brute_typicality(dup, 3), rtol=1e-6)
    assert typicality(x[:1], 5).tolist() == [0.0]  # a lone row: no neighbours, typicality 0
    assert len(typicality(x[:0], 5)) == 0


# -- the selection rule ----------------------------------------------------------------------


def test_picks_follow_the_greedy_rule_of_a_brute_force_reference() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(15, 5)) + 3 * rng.normal(size=5) for _ in range(4)])
    for n_lab, k in [(0, 3), (4, 5), (10, 12)]:  # the last one revisits clusters
        labelled = np.zeros(len(x), bool)
        labelled[rng.choice(len(x), n_lab, replace=False)] = True
        got = typiclust_picks(x, labelled, k, knn=4, random_state=7, max_clusters=14, **PAPER_TEXT)
        assign = kmeans_labels(l2_normalize(x), min(n_lab + k, 14), 7)
        assert got.tolist() == brute_picks(x, labelled, k, assign, 4)


def test_k_distinct_unlabelled_picks_from_distinct_clusters() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 8))
    labelled = np.zeros(len(x), bool)
    labelled[rng.choice(len(x), 9, replace=False)] = True
    k = 11
    got = typiclust_picks(x, labelled, k, random_state=5, **PAPER_TEXT)
    assert len(set(got.tolist())) == k and not labelled[got].any()
    assign = kmeans_labels(l2_normalize(x), 9 + k, 5)  # the clustering select used
    assert len(set(assign[got].tolist())) == k  # one per cluster
    assert not np.isin(assign[got], assign[labelled]).any()  # none in an already covered one


def test_picks_the_densest_centre_of_each_blob() -> None:
    x, centres = blobs()
    got = typiclust_picks(x, np.zeros(len(x), bool), 4, random_state=0)
    nearest = np.linalg.norm(x[got][:, None] - centres[None], axis=2).argmin(axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]  # one per blob
    angle = lambda p: np.arctan2(p[..., 1], p[..., 0])  # noqa: E731
    off = np.abs(np.angle(np.exp(1j * (angle(x[got]) - angle(centres[nearest])))))
    assert (off < 0.03).all(), off  # within the dense core (angular sd 0.015)


def test_a_covered_blob_is_not_picked_again_while_others_are_uncovered() -> None:
    x, centres = blobs(1)
    labelled = np.zeros(len(x), bool)
    labelled[[0, 1, 80, 81]] = True  # two labelled in blobs 0 and 1 each
    got = typiclust_picks(x, labelled, 2, random_state=0)
    nearest = np.linalg.norm(x[got][:, None] - centres[None], axis=2).argmin(axis=1)
    assert sorted(nearest.tolist()) == [2, 3]


def authors_select(
    features: np.ndarray, labelled: np.ndarray, budget: int, clusters: np.ndarray
) -> list[int]:
    """avihu111/TypiClust `TypiClust.select_samples` on given cluster ids, written out:
    relevant = lSet then uSet; clusters of <= MIN_CLUSTER_SIZE = 5 points dropped; the rest
    sorted once by (existing count, -size) (a stable sort: ties keep cluster-id order); pick i
    from the (i % #clusters)-th; typicality = 1 / (mean of the K = min(20, m // 2) smallest
    squared distances to the cluster's other unlabelled points + 1e-5)."""
    lset = np.flatnonzero(labelled)
    uset = np.flatnonzero(~labelled)
    relevant = np.concatenate([lset, uset])
    feats = features[relevant]
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)  # their features are normalised
    labels = clusters[relevant].copy()
    existing = np.arange(len(lset))
    ids, sizes = np.unique(labels, return_counts=True)
    existing_count = [int((labels[existing] == c).sum()) for c in ids]
    table = [(c, int(n), e) for c, n, e in zip(ids, sizes, existing_count, strict=True)]
    table = [row for row in table if row[1] > 5]
    table = sorted(table, key=lambda row: (row[2], -row[1]))
    labels[existing] = -1
    selected = []
    for i in range(budget):
        cluster = table[i % len(table)][0]
        indices = np.flatnonzero(labels == cluster)
        rel = feats[indices]
        k = min(20, len(indices) // 2)
        d2 = ((rel[:, None, :] - rel[None, :, :]) ** 2).sum(-1)
        # faiss search of k + 1 neighbours, the first (itself) dropped
        nearest = np.sort(d2, axis=1)[:, 1 : k + 1]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # k = 0: mean of nothing
            typ = 1 / (nearest.mean(axis=1) + 1e-5)
        idx = indices[typ.argmax()]
        selected.append(int(idx))
        labels[idx] = -1
    return relevant[selected].tolist()


def fixed_clusters(monkeypatch, assign: np.ndarray) -> None:
    """Make `typiclust_picks` use the given cluster ids instead of k-means."""
    monkeypatch.setattr(typiclust_mod, "kmeans_labels", lambda x, n, seed: assign.copy())


@pytest.mark.parametrize("seed", range(6))
def test_picks_follow_the_authors_code_on_given_clusters(monkeypatch, seed: int) -> None:
    """Clusters of 1-40 points (some of 5 or fewer), labelled points in some, budgets that
    stay within the kept clusters and that wrap around them (the authors' i % #clusters)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 5, 6, 7, 9, 14, 25, 40], size=10)
    sizes[:2] = [30, 12]  # at least two kept clusters
    assign = rng.permutation(np.repeat(np.arange(10), sizes))
    x = rng.normal(size=(len(assign), 6)) + 4 * rng.normal(size=(10, 6))[assign]
    labelled = np.zeros(len(assign), bool)
    labelled[rng.choice(len(assign), int(rng.integers(0, 8)), replace=False)] = True
    kept_free = sum(int(((assign == c) & ~labelled).sum()) for c in range(10) if sizes[c] > 5)
    fixed_clusters(monkeypatch, assign)
    for budget in (1, 3, 9, min(15, kept_free // 2)):
        got = typiclust_picks(x, labelled, budget, random_state=seed)
        assert got.tolist() == authors_select(x, labelled, budget, assign), budget


def test_picks_follow_the_authors_code_after_k_means() -> None:
    """Unpatched: |L| + B k-means clusters (capped), then the authors' rule on them."""
    rng = np.random.default_rng(11)
    x = np.concatenate(
        [rng.normal(size=(n, 5)) + 3 * rng.normal(size=5) for n in (40, 25, 12, 6, 3, 2)]
    )
    for n_lab, k, cap in [(0, 4, 500), (5, 6, 500), (3, 12, 8)]:
        labelled = np.zeros(len(x), bool)
        labelled[rng.choice(len(x), n_lab, replace=False)] = True
        got = typiclust_picks(x, labelled, k, random_state=3, max_clusters=cap)
        assign = kmeans_labels(l2_normalize(x), min(n_lab + k, cap), 3)
        assert got.tolist() == authors_select(x, labelled, k, assign)


def test_small_clusters_are_avoided_and_used_only_as_a_last_resort(monkeypatch) -> None:
    rng = np.random.default_rng(4)
    assign = np.repeat([0, 1, 2, 3], [8, 1, 2, 5])  # one kept cluster, three small ones
    x = rng.normal(size=(len(assign), 3)) + 5 * rng.normal(size=(4, 3))[assign]
    labelled = np.zeros(len(assign), bool)
    fixed_clusters(monkeypatch, assign)
    got = typiclust_picks(x, labelled, 8, random_state=0)
    assert (assign[got] == 0).all()  # singletons and pairs are never picked while 0 has any
    got = typiclust_picks(x, labelled, 12, random_state=0)  # 0 runs out: then 3, 2, 1, ...
    assert (assign[got[:8]] == 0).all() and assign[got[8:]].tolist() == [3, 2, 1, 3]
    assert len(set(got.tolist())) == 12
    # the paper's text: every cluster, the singleton included, before any is revisited
    paper = typiclust_picks(x, labelled, 4, random_state=0, **PAPER_TEXT)
    assert sorted(assign[paper].tolist()) == [0, 1, 2, 3]
    everything_small = typiclust_picks(x, labelled, 3, random_state=0, min_cluster_size=10)
    assert assign[everything_small].tolist() == [0, 3, 2]  # no kept cluster: all in turn


def test_neighbour_rules() -> None:
    from flexsample.estimators.typiclust import neighbours

    assert [neighbours(20, m) for m in (1, 2, 3, 10, 41, 100)] == [0, 1, 1, 5, 20, 20]
    assert [neighbours(20, m, "all") for m in (1, 2, 3, 10, 41, 100)] == [0, 1, 2, 9, 20, 20]
    assert neighbours(3, 10, "half") == 3


def test_bad_pick_count_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot pick 3 of 2"):
        typiclust_picks(np.eye(3), np.array([True, False, False]), 3)


# -- the estimator in the engine --------------------------------------------------------------


def tiny_model(num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    emb = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
    return adapt_model(emb, nn.Linear(12, num_classes), 0.5).eval()


@pytest.fixture
def setup():
    n = 90
    model = tiny_model()
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    labels = np.arange(n) % 3
    subset = np.arange(0, n, 5)

    def ctx(step: int = 1, seed: int = 0) -> ScoringContext:
        return ScoringContext(
            model,
            tensor_inputs(x),
            labels,
            seed=seed,
            step=step,
            batch_size=32,
            subset_indices=subset,
        )

    with torch.inference_mode():
        feats = model.embed(x).numpy().astype(np.float64)
    return {"ctx": ctx, "labels": labels, "subset": subset, "feats": feats, "n": n}


def test_select_clusters_the_class_candidates_with_its_subset_members(setup) -> None:
    labels, subset = setup["labels"], setup["subset"]
    cand = np.setdiff1d(np.flatnonzero(labels == 1), subset)
    est = build_estimator("typiclust", knn=5)
    got = select_candidates(est, setup["ctx"](), cand, 4)
    # the same rule on the class's rows (candidates + its subset members), ascending
    rows = np.sort(np.concatenate([cand, subset[labels[subset] == 1]]))
    seed = int(np.random.SeedSequence([0, 1, 0x7C1]).generate_state(1)[0])
    want = rows[
        typiclust_picks(setup["feats"][rows], np.isin(rows, subset), 4, knn=5, random_state=seed)
    ]
    np.testing.assert_array_equal(got, want)
    assert len(set(got.tolist())) == 4 and np.isin(got, cand).all()


def test_select_is_deterministic_for_a_seed_and_step(setup) -> None:
    labels, subset = setup["labels"], setup["subset"]
    cand = np.setdiff1d(np.flatnonzero(labels == 2), subset)
    est = build_estimator("typiclust")
    a = select_candidates(est, setup["ctx"](step=3, seed=4), cand, 6)
    b = select_candidates(build_estimator("typiclust"), setup["ctx"](step=3, seed=4), cand, 6)
    np.testing.assert_array_equal(a, b)


def test_score_is_typicality_within_each_class_of_candidates(setup) -> None:
    labels, subset, feats = setup["labels"], setup["subset"], setup["feats"]
    cand = np.random.default_rng(0).permutation(np.setdiff1d(np.arange(setup["n"]), subset))
    got = score_candidates(build_estimator("typiclust", knn=6, **PAPER_TEXT), setup["ctx"](), cand)
    authors = score_candidates(build_estimator("typiclust", knn=40), setup["ctx"](), cand)
    want, want_authors = np.zeros(len(cand)), np.zeros(len(cand))
    for c in range(3):
        pos = np.flatnonzero(labels[cand] == c)
        want[pos] = brute_typicality(feats[cand[pos]], 6)
        # the authors' K = min(knn, m // 2) on m candidates, squared distances
        want_authors[pos] = brute_typicality(feats[cand[pos]], len(pos) // 2, squared=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(authors, want_authors, rtol=1e-5)


def test_typiclust_options() -> None:
    est = build_estimator("typiclust", knn=None)
    assert isinstance(est, TypiClustEstimator) and est.knn == 20  # the paper's K
    assert est.needs == {"features", "labels"} and est.max_clusters == 500
    # the authors' code: MIN_CLUSTER_SIZE = 5, K = min(K_NN, m // 2), one static ranking,
    # faiss IndexFlatL2 (squared) distances
    assert (est.min_cluster_size, est.knn_rule, est.order, est.distance) == (
        5,
        "half",
        "static",
        "squared",
    )
    paper = build_estimator("typiclust", **PAPER_TEXT)
    assert (paper.min_cluster_size, paper.knn_rule, paper.order, paper.distance) == (
        0,
        "all",
        "greedy",
        "euclidean",
    )
    for bad in (
        {"min_cluster_size": -1},
        {"knn_rule": "third"},
        {"order": "random"},
        {"distance": "cosine"},
    ):
        with pytest.raises(FlexsampleError, match=next(iter(bad))):
            build_estimator("typiclust", **bad)
        with pytest.raises(FlexsampleError, match=next(iter(bad))):
            TypiClustEstimator(**bad)
    assert build_estimator("typiclust", knn=7).knn == 7
    with pytest.raises(FlexsampleError, match="knn"):
        build_estimator("typiclust", knn=0)
    with pytest.raises(FlexsampleError, match="max_clusters"):
        TypiClustEstimator(max_clusters=0)


# -- the rename: prototype-cosine, and `typicality` as a deprecated alias ----------------------


def test_the_old_name_builds_the_same_estimator_and_warns_once(setup) -> None:
    with pytest.warns(FutureWarning) as record:
        old = build_estimator("typicality")
    assert [str(w.message) for w in record] == [DEPRECATION]
    assert isinstance(old, PrototypeCosineEstimator) and old.name == "prototype-cosine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        new = build_estimator("prototype-cosine")
    cand = np.setdiff1d(np.arange(setup["n"]), setup["subset"])
    np.testing.assert_array_equal(
        score_candidates(old, setup["ctx"](), cand), score_candidates(new, setup["ctx"](), cand)
    )


def test_the_old_name_works_in_a_combination() -> None:
    with pytest.warns(FutureWarning) as record:
        est = build_estimator("typicality+margin")
    assert [str(w.message) for w in record] == [DEPRECATION]
    assert est.name == "prototype-cosine+margin"
    assert isinstance(est.parts[0], PrototypeCosineEstimator)


def test_listings_show_the_new_name_only() -> None:
    names = list_estimators()
    assert {"prototype-cosine", "typiclust"} <= set(names) and "typicality" not in names
    rows = {name: doc for name, doc, _ in ESTIMATORS.describe()}
    assert "typicality" not in rows and "formerly 'typicality'" in rows["prototype-cosine"]
    assert ESTIMATORS.aliases() == {"typicality": "prototype-cosine"}
    assert "typicality" in ESTIMATORS and ESTIMATORS.is_builtin("typicality")
    with pytest.raises(UnknownNameError) as info:
        ESTIMATORS.get("nope")
    assert "typicality" not in str(info.value)


@pytest.mark.parametrize(
    "taken, match",
    [
        (
            "typicality",
            "registers estimator 'typicality', which is a built-in name "
            r"\(the deprecated alias of 'prototype-cosine'\); choose another name",
        ),
        ("prototype-cosine", "registers estimator 'prototype-cosine', which is a built-in name"),
        ("typiclust", "registers estimator 'typiclust', which is a built-in name"),
    ],
)
def test_a_plugin_cannot_take_the_old_or_new_name(taken: str, match: str) -> None:
    mine = type("Mine", (), {"__module__": "my_plugin"})
    with pytest.raises(RegistrationError, match=match):
        ESTIMATORS.register(taken)(mine)
    assert ESTIMATORS.resolve(taken, warn=False) in {"prototype-cosine", "typiclust"}


def test_registry_aliases_in_general() -> None:
    reg: Registry = Registry("thing", "flexsample.test-no-such-group")
    new = type("New", (), {"__module__": "pkg_a"})
    reg.register("new")(new)
    with pytest.raises(ValueError, match="unregistered 'gone'"):
        reg.alias("old", "gone")
    reg.alias("old", "new")
    reg.alias("old", "new")  # the same alias again (a module imported twice) is fine
    with pytest.warns(FutureWarning, match="thing 'old' is deprecated: it is now called 'new'"):
        assert reg.get("old") is new
    with pytest.warns(FutureWarning):
        assert isinstance(reg.create("old"), new)
    assert reg.names() == ["new"] and [r[0] for r in reg.describe()] == ["new"]
    assert reg.origin("old") == reg.origin("new") == "module pkg_a"
    with pytest.raises(
        RegistrationError,
        match="which is the deprecated alias of 'new' "
        r"\(module pkg_a\); choose another name",
    ):
        reg.register("old")(type("Other", (), {"__module__": "pkg_b"}))
    with pytest.raises(RegistrationError, match="'new', already registered by module pkg_a"):
        reg.alias("new", "new")


# -- through the CLI, on the embedded dataset ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["typiclust", "typicality+margin"])
def test_runs_through_the_cli(cli, tmp_path, spec: str) -> None:
    import json

    from tests.conftest import TINY

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's own default for FutureWarning: once a place
        res = cli("run", *TINY, "--out", tmp_path / "r", "--estimator", spec)
    assert res.exit_code == 0, res.output
    # the CLI prints a deprecation as one 'warning: ...' line on stderr, once per run
    lines = [ln for ln in res.stderr.splitlines() if "deprecated" in ln]
    assert lines == ([f"warning: {DEPRECATION}"] if spec.startswith("typicality") else [])
    assert json.loads((tmp_path / "r" / "results.json").read_text())
