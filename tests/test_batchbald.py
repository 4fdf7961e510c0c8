"""BatchBALD against batchbald_redux (the authors' reference) on the same draws, hand-computed
cases, the sampled regime, and the estimator through a real scoring context."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.registries import ESTIMATORS, list_estimators
from flexsample.engine.scoring import score_candidates, select_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators import functional as F
from flexsample.estimators.batchbald import (
    BatchBALDEstimator,
    batch_mutual_information,
    batchbald_batch,
    saturation_pick,
    selection_seed,
)
from flexsample.training.models import adapt_model

# the reference (the `reference` extra; CI installs it): only the comparisons need it
needs_reference = pytest.mark.needs("batchbald_redux")


@pytest.fixture
def bb(monkeypatch):
    """batchbald_redux's module, with its chunking helper's gc.collect() (toma runs it around
    every chunked call, 0.2 s each under pytest) turned off: it changes no result."""
    import toma
    from batchbald_redux import batchbald

    monkeypatch.setattr(toma, "gc_cuda", lambda: None)
    return batchbald


def problem(n: int, t: int, c: int, seed: int, dtype=torch.float64):
    """Log-probabilities (N, T, C) as batchbald_redux takes them, and our (T, N, C) draws,
    exp'd from the very same log-probabilities (the reference exponentiates them too)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, t, c, generator=g, dtype=dtype)
    logits += 2 * torch.randn(n, 1, c, generator=g, dtype=dtype)  # per-candidate bias
    log_probs = torch.log_softmax(logits, -1)
    return log_probs, log_probs.exp().permute(1, 0, 2).contiguous()


def reference(bb, log_probs: torch.Tensor, k: int, samples: int, seed: int):
    torch.manual_seed(seed)  # the reference draws its configurations from the global generator
    out = bb.get_batchbald_batch(log_probs, k, samples, dtype=log_probs.dtype, device="cpu")
    return out.indices, np.asarray(out.scores)


def h2(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize(
    ("n", "t", "c", "k", "samples", "seed"),
    [
        (50, 10, 4, 5, 10_000, 0),  # exact throughout (4^4 <= 10,000)
        (200, 10, 8, 5, 10_000, 1),  # exact throughout (8^4 <= 10,000)
        (120, 10, 6, 5, 10_000, 2),
        (150, 10, 4, 8, 200, 3),  # exact for 3 picks, then 20 configurations per draw
        (100, 10, 8, 6, 1_000, 4),  # exact for 3 picks, then sampled
    ],
)
@needs_reference
def test_same_picks_and_information_as_batchbald_redux(bb, n, t, c, k, samples, seed) -> None:
    log_probs, probs = problem(n, t, c, seed)
    want_idx, want_mi = reference(bb, log_probs, k, samples, seed=100 + seed)
    picks, mi = batchbald_batch(probs, k, samples, seed=100 + seed)
    assert picks.tolist() == want_idx
    np.testing.assert_allclose(mi, want_mi, rtol=1e-9, atol=1e-9)


@needs_reference
def test_float32_picks_match_the_float64_reference(bb) -> None:
    log_probs, probs = problem(200, 20, 8, seed=7)
    want_idx, want_mi = reference(bb, log_probs, 6, 10_000, seed=5)  # 5 exact picks, 1 sampled
    picks, mi = batchbald_batch(probs.float(), 6, 10_000, seed=5)
    assert picks.tolist() == want_idx
    np.testing.assert_allclose(mi, want_mi, rtol=1e-4)


def duplicates_case() -> torch.Tensor:
    """T = 4 draws, C = 2. Candidates 1 and 2 are duplicates telling {w1,w2} from {w3,w4}
    (p = 0.99); candidate 0 tells {w1,w3} from {w2,w4}, less sharply (p = 0.95); 3 and 4 are
    uninformative (the same prediction under every draw)."""
    a = [[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.01, 0.99]]
    b = [[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]]
    flat = [[0.5, 0.5]] * 4
    skew = [[0.8, 0.2]] * 4
    return torch.tensor([b, a, a, flat, skew], dtype=torch.float64).permute(1, 0, 2).contiguous()


def test_duplicates_are_not_taken_together() -> None:
    probs = duplicates_case()
    bald = F.bald(probs).numpy()
    top2 = sorted(np.argsort(-bald, kind="stable")[:2].tolist())
    assert top2 == [1, 2]  # top-k BALD takes both duplicates
    picks, mi = batchbald_batch(probs, 2)
    assert picks.tolist() == [1, 0]  # BatchBALD: a duplicate (the lower index), then the other
    # I(a; w) = H(0.5) - H(0.01); a and b are independent with uniform marginals, so
    # I(a, b; w) = log 4 - H(0.01) - H(0.05)
    np.testing.assert_allclose(mi, [math.log(2) - h2(0.01), math.log(4) - h2(0.01) - h2(0.05)])
    # the duplicate's gain, by hand: H(a, a') from the joint of two conditionally iid copies
    same, differ = 0.5 * (0.99**2 + 0.01**2), 0.99 * 0.01
    i_dup = -2 * same * math.log(same) - 2 * differ * math.log(differ) - 2 * h2(0.01)
    assert i_dup < mi[1]
    np.testing.assert_allclose(batch_mutual_information(probs, [1, 2]), i_dup)


def test_one_pick_is_the_bald_argmax() -> None:
    for seed in range(3):
        _, probs = problem(400, 10, 5, seed=10 + seed)
        picks, mi = batchbald_batch(probs.float(), 1)
        bald = F.bald(probs)
        assert picks.tolist() == [int(torch.argmax(bald))]
        np.testing.assert_allclose(mi[0], float(bald.max()), rtol=1e-5)


def test_ties_go_to_the_lowest_index() -> None:
    one = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float32)  # (T, C)
    probs = torch.cat([torch.full((2, 3, 2), 0.5), one[:, None].expand(2, 4, 2)], 1)
    picks, _ = batchbald_batch(probs.contiguous(), 1)
    assert picks.tolist() == [3]  # candidates 3..6 are identical and the most informative


def test_sampled_regime_is_deterministic_and_close_to_exact() -> None:
    _, probs = problem(60, 10, 4, seed=21)
    picks, mi = batchbald_batch(probs, 8, 1_000, seed=3)  # exact for 4 picks, sampled beyond
    again, mi_again = batchbald_batch(probs, 8, 1_000, seed=3)
    assert picks.tolist() == again.tolist()
    np.testing.assert_array_equal(mi, mi_again)
    exact = batch_mutual_information(probs, picks)  # all 4^8 = 65,536 configurations
    assert abs(mi[-1] - exact) < 0.05 * exact
    for s in range(3):  # the estimator itself, with many more configurations
        est = batch_mutual_information(probs, picks, num_samples=50_000, seed=s)
        assert abs(est - exact) < 0.02 * exact


def test_exact_information_matches_brute_force() -> None:
    _, probs = problem(6, 5, 3, seed=30)
    batch = [0, 2, 5]
    p = probs.numpy()
    joint = np.zeros((3, 3, 3))
    for t in range(5):
        joint += np.einsum("a,b,c->abc", p[t, 0], p[t, 2], p[t, 5]) / 5
    want = -(joint * np.log(joint)).sum()
    want -= sum(-(p[:, i] * np.log(p[:, i])).sum(1).mean() for i in batch)
    np.testing.assert_allclose(batch_mutual_information(probs, batch), want, rtol=1e-12)


def test_bad_options_are_refused() -> None:
    with pytest.raises(FlexsampleError, match="--mc-samples"):
        BatchBALDEstimator(mc_samples=1)
    with pytest.raises(FlexsampleError, match="--mc-mode"):
        BatchBALDEstimator(mc_mode="half")
    with pytest.raises(FlexsampleError, match="--batchbald-samples"):
        BatchBALDEstimator(batchbald_samples=0)
    with pytest.raises(FlexsampleError, match="0 <= k <= 3"):
        batchbald_batch(torch.full((2, 3, 2), 0.5), 4)


# -- through a scoring context ------------------------------------------------------------


def tiny_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    emb = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
    return adapt_model(emb, nn.Linear(16, num_classes), 0.5).eval()


@pytest.fixture
def make_ctx():
    n = 120
    model = tiny_model()
    x = torch.randn(n, 10, generator=torch.Generator().manual_seed(1))
    labels = np.arange(n) % 4

    def ctx(step: int = 1, **kw) -> ScoringContext:
        return ScoringContext(
            model,
            tensor_inputs(x),
            labels,
            seed=0,
            step=step,
            batch_size=16,
            subset_indices=np.arange(0, n, 4),
            **kw,
        )

    return ctx


def test_registered_with_a_description() -> None:
    assert "batchbald" in list_estimators()
    rows = {name: doc for name, doc, _ in ESTIMATORS.describe()}
    assert "BatchBALD" in rows["batchbald"]


def test_select_through_a_context(make_ctx) -> None:
    cand = np.setdiff1d(np.arange(120), np.arange(0, 120, 4))
    est = build_estimator("batchbald", mc_samples=8, batchbald_samples=100)
    got = select_candidates(est, make_ctx(), cand, 6)  # the engine's path, validated
    assert len(set(got.tolist())) == 6 and np.isin(got, cand).all()
    # the same picks from the draws collected directly (4^4 > 100: the last 3 are sampled)
    draws = torch.cat([p for _, p in make_ctx().for_estimator("x", {"mc"}).iter_mc(cand, 8)], 1)
    picks, _ = batchbald_batch(draws, 6, 100, seed=selection_seed(0, 1))
    np.testing.assert_array_equal(got, cand[picks])
    # deterministic for the same (seed, step), whatever the candidates' order
    np.testing.assert_array_equal(est.select(make_ctx(), cand[::-1].copy(), 6), got)
    # score: per-sample BALD, so it composes with '+'
    scores = score_candidates(est, make_ctx(), cand)
    np.testing.assert_allclose(scores, F.bald(draws).numpy(), rtol=1e-6, atol=1e-9)
    combined = build_estimator("batchbald+entropy", mc_samples=8)
    assert score_candidates(combined, make_ctx(), cand).shape == (len(cand),)


def test_memory_budget_names_the_options(make_ctx) -> None:
    cand = np.arange(1, 120, 2)
    est = BatchBALDEstimator(mc_samples=8, batchbald_samples=100)
    with pytest.raises(FlexsampleError, match=r"60 candidates.*--mc-samples \d+"):
        select_candidates(est, make_ctx(mc_memory=8_000), cand, 3)


def test_a_class_beyond_the_size_limit_falls_back_to_power_bald(make_ctx) -> None:
    """n x T above batchbald_max_draws: one warning line, and the picks of power BALD (beta 1)
    on the same BALD scores and Gumbel draws, i.e. what mcdropout with --acquisition power
    takes from that class."""
    from flexsample.engine.selection import acquisition_keys, top_k

    cand = np.setdiff1d(np.arange(120), np.arange(0, 120, 4))  # 90 candidates
    est = build_estimator("batchbald", mc_samples=8, batchbald_max_draws=90 * 8 - 1)
    with pytest.warns(RuntimeWarning, match=r"batchbald_max_draws 719.*--acquisition power"):
        got = select_candidates(est, make_ctx(step=3), cand, 7)
    bald = score_candidates(build_estimator("mcdropout", mc_samples=8), make_ctx(step=3), cand)
    keys = acquisition_keys(
        bald, cand, np.array([0, 90]), "power", 1.0, seed=0, step=3, num_items=120
    )
    np.testing.assert_array_equal(np.sort(got), np.sort(cand[top_k(keys, 7)]))
    # at the limit: greedy BatchBALD, no warning
    import warnings

    at = build_estimator("batchbald", mc_samples=8, batchbald_max_draws=90 * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picks = select_candidates(at, make_ctx(step=3), cand, 3)
    assert len(set(picks.tolist())) == 3
    assert BatchBALDEstimator().batchbald_max_draws == 50_000
    with pytest.raises(FlexsampleError, match="batchbald_max_draws"):
        BatchBALDEstimator(batchbald_max_draws=0)


def test_merged_repeated_configurations_change_no_estimate() -> None:
    """The sampled joint entropy with repeats merged (count-weighted) equals the plain mean
    over every drawn configuration."""
    from flexsample.estimators.batchbald import configuration_weights, sampled_log_joint

    _, probs = problem(30, 6, 3, seed=40)
    batch = probs[:, [1, 4, 9, 17]]
    g = torch.Generator().manual_seed(2)
    merged, counts = sampled_log_joint(batch, 200, g)
    assert len(merged) < 6 * 200 and counts.sum() == 6 * 200
    full = torch.repeat_interleave(merged, counts.long(), dim=0)  # every draw, repeats kept
    _, _, want = configuration_weights(full, False)
    _, _, got = configuration_weights(merged, False, counts)
    assert math.isclose(got, want, rel_tol=1e-12)


def _two_bits_problem() -> torch.Tensor:
    """T = 4 draws, C = 2: candidate 1's label is the draw's first bit, candidate 3's its
    second, the others are coins whose odds differ a little by draw. Together 1 and 3 name
    the draw: I = log 4, the most that 4 equally weighted draws hold."""
    t, n = 4, 6
    p1 = torch.full((t, n), 0.5, dtype=torch.float64)
    p1[:, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    p1[:, 3] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for j, eps in ((0, 0.05), (2, 0.1), (4, 0.02), (5, 0.08)):
        p1[:, j] = 0.5 + eps * torch.tensor([1.0, -1.0, 1.0, -1.0])
    return torch.stack([1 - p1, p1], -1)


def test_the_batch_information_saturates_at_log_t() -> None:
    """Once two picks name the draw, I(y_batch; w) = log T exactly and no pick adds to it."""
    probs = _two_bits_problem()
    picks, mi = batchbald_batch(probs, 4, num_samples=10_000)
    assert sorted(picks[:2].tolist()) == [1, 3]
    assert mi[1] == pytest.approx(math.log(4), abs=1e-12)
    assert mi[2] == pytest.approx(math.log(4), abs=1e-12)  # the third pick gains nothing
    assert saturation_pick(mi, 4) == 2
    assert saturation_pick(mi[:1], 4) is None  # one pick holds one bit: log 2 < 0.95 log 4
    assert saturation_pick(np.array([0.1, 0.2]), 1) is None
    # the bound is the share SATURATED of log T, inclusive
    assert saturation_pick(np.array([0.5, 0.95 * math.log(10), 2.0]), 10) == 2


def test_picks_past_saturation_are_reported_once_per_run() -> None:
    est = BatchBALDEstimator(mc_samples=4)
    _, mi = batchbald_batch(_two_bits_problem(), 4, num_samples=10_000)
    with pytest.warns(RuntimeWarning) as got:
        est._report_saturation(mi, 4, step=3)
    (line,) = [str(w.message) for w in got]
    assert line.startswith("batchbald: at query 3 a class's batch reached 1.39 nats")
    assert "after 2 of its 4 picks" in line and "(log 4 = 1.39)" in line
    assert "its other 2 picks" in line and "--acquisition power" in line
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est._report_saturation(mi, 4, step=4)  # said once per run
        fresh = BatchBALDEstimator(mc_samples=4)
        fresh._report_saturation(mi[:2], 4, step=1)  # saturated at the last pick: nothing after
        fresh._report_saturation(mi[:1], 4, step=1)  # never saturated


def test_select_warns_when_a_quota_outlasts_what_the_draws_hold() -> None:
    """Through the engine's path: 2 draws hold at most log 2 nats; a confident model (weights
    x 10) whose two dropout draws disagree reaches that at its first pick, so the run hears of
    it once; the same model as it was (weights x 1) stays below it over 30 picks."""
    cand = np.setdiff1d(np.arange(120), np.arange(0, 120, 4))
    x = torch.randn(120, 10, generator=torch.Generator().manual_seed(1))

    def ctx(scale: float, step: int) -> ScoringContext:
        model = tiny_model()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        return ScoringContext(
            model,
            tensor_inputs(x),
            np.arange(120) % 4,
            seed=0,
            step=step,
            batch_size=16,
            subset_indices=np.arange(0, 120, 4),
        )

    est = build_estimator("batchbald", mc_samples=2)
    with pytest.warns(RuntimeWarning, match=r"after 1 of its 30 picks.*\(log 2 = 0\.69\)"):
        got = select_candidates(est, ctx(10.0, 1), cand, 30)
    assert len(set(got.tolist())) == 30
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_candidates(est, ctx(10.0, 2), cand, 30)  # once per run
        calm = build_estimator("batchbald", mc_samples=2)
        select_candidates(calm, ctx(1.0, 1), cand, 30)  # 0.35 nats at most: no line
