"""Counter-based dropout masks and the scoring context's MC-dropout / caching behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import EstimatorError, FlexsampleError
from flexsample.engine.masks import (
    MaskSampler,
    _key,
    draw_unit_hash,
    finalize_,
    finalize_int,
    keep_masks,
    keep_threshold,
    mix32,
    mix32_int,
    sample_hash,
)
from flexsample.engine.scoring import score_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators import functional as F
from flexsample.training.models import adapt_model

M32 = 0xFFFFFFFF


def tiny_model(num_classes: int = 4, d_in: int = 12, d: int = 24, p: float = 0.5, seed: int = 0):
    """embed = Linear + ReLU; the only dropout is before the head (the paper's model)."""
    torch.manual_seed(seed)
    model = adapt_model(nn.Sequential(nn.Linear(d_in, d), nn.ReLU()), nn.Linear(d, num_classes), p)
    return model.eval()


def make_ctx(model, x, labels, batch_size=32, seed=0, step=1, **kw) -> ScoringContext:
    return ScoringContext(
        model, tensor_inputs(x), labels, seed=seed, step=step, batch_size=batch_size, **kw
    )


# -- the hash --------------------------------------------------------------------------------


def test_tensor_mixers_match_the_python_reference() -> None:
    rng = np.random.default_rng(0)
    vals = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *rng.integers(0, 2**32, 61).tolist()]
    got = mix32(torch.tensor(vals, dtype=torch.int64)).tolist()
    assert got == [mix32_int(v) for v in vals]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in vals], dtype=torch.int32)
    out = finalize_(signed.clone()).to(torch.int64) & M32
    assert out.tolist() == [finalize_int(v) for v in vals]


def reference_keep(seed: int, step: int, index: int, draw: int, unit: int, p: float) -> bool:
    """The mask definition, spelled out on Python ints."""
    base = mix32_int(mix32_int(((draw * 0x9E3779B9) & M32) ^ _key(seed, step)) + unit)
    s = mix32_int(mix32_int(index & M32) ^ ((index >> 32) & M32))
    h = finalize_int(base ^ s)
    signed = h - 2**32 if h >= 2**31 else h
    return signed < keep_threshold(p)


def test_keep_masks_are_the_documented_pure_function() -> None:
    idx = torch.tensor([0, 5, 2**33 + 7, 123456789], dtype=torch.int64)
    got = keep_masks(3, 2, idx, 3, 5, 0.3)
    assert got.shape == (3, 4, 5) and got.dtype == torch.bool
    for t in range(3):
        for b, i in enumerate(idx.tolist()):
            for u in range(5):
                assert bool(got[t, b, u]) == reference_keep(3, 2, i, t, u, 0.3)


def test_mask_sampler_matches_keep_masks_across_batch_sizes_and_reuse() -> None:
    sampler = MaskSampler(7, 4, 6, 33, 0.5, "cpu")
    idx = torch.arange(100, 140)
    full = keep_masks(7, 4, idx, 6, 33, 0.5)
    for lo, hi in [(0, 40), (3, 5), (0, 1), (10, 40), (0, 40)]:
        assert torch.equal(sampler.keep(idx[lo:hi]), full[:, lo:hi])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_independence(p: float) -> None:
    keep = keep_masks(0, 1, torch.arange(64), 20, 256, p).double()
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    # neighbouring samples, draws and units are uncorrelated
    pairs = [(keep[:, :-1], keep[:, 1:]), (keep[:-1], keep[1:]), (keep[..., :-1], keep[..., 1:])]
    for a, b in pairs:
        corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(corr) < 0.02


def test_mask_edge_cases() -> None:
    assert keep_masks(0, 0, torch.arange(3), 2, 4, 0.0).all()
    assert MaskSampler(0, 0, 2, 4, 0.0, "cpu").keep(torch.arange(3)).all()
    with pytest.raises(ValueError):
        keep_masks(0, 0, torch.arange(3), 2, 4, 1.0)
    assert draw_unit_hash(0, 1, 2, 3).dtype == torch.int32
    assert sample_hash(torch.tensor([1, 2])).dtype == torch.int32
    assert not torch.equal(
        keep_masks(0, 1, torch.arange(8), 4, 16, 0.5), keep_masks(0, 2, torch.arange(8), 4, 16, 0.5)
    )


# -- MC dropout in the context ---------------------------------------------------------------


def test_head_mode_draws_are_the_masked_head_exactly() -> None:
    model = tiny_model(p=0.3)
    x = torch.randn(10, 12)
    ctx = make_ctx(model, x, np.zeros(10, np.int64), batch_size=4, seed=3, step=2)
    idx = np.arange(10)
    got = torch.cat([probs for _, probs in ctx.iter_mc(idx, 5)], dim=1)  # (T, N, C)
    with torch.inference_mode():
        f = model.embed(x)
        keep = keep_masks(3, 2, torch.as_tensor(idx), 5, f.shape[1], 0.3)
        want = torch.softmax(model.head(f.unsqueeze(0) * keep / 0.7), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_mc_scores_do_not_depend_on_batch_size_or_order() -> None:
    model = tiny_model()
    x = torch.randn(90, 12)
    labels = np.zeros(90, np.int64)
    est = build_estimator("mcdropout", mc_samples=8)
    cand = np.arange(5, 90, 2)
    ref = score_candidates(est, make_ctx(model, x, labels, batch_size=90), cand)
    for bs in (1, 7, 32):
        got = score_candidates(est, make_ctx(model, x, labels, batch_size=bs), cand)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(cand))
    got = score_candidates(est, make_ctx(model, x, labels, batch_size=16), cand[perm])
    np.testing.assert_allclose(got, ref[perm], rtol=1e-5, atol=1e-9)


def test_mc_scores_are_deterministic_and_seeded() -> None:
    model = tiny_model()
    x = torch.randn(40, 12)
    labels = np.zeros(40, np.int64)
    cand = np.arange(40)
    est = build_estimator("mcdropout", mc_samples=6)

    def run(seed: int, step: int) -> np.ndarray:
        return score_candidates(est, make_ctx(model, x, labels, seed=seed, step=step), cand)

    np.testing.assert_array_equal(run(0, 1), run(0, 1))
    assert not np.allclose(run(0, 1), run(1, 1))
    assert not np.allclose(run(0, 1), run(0, 2))


def test_precomputed_features_and_fused_pass_agree() -> None:
    model = tiny_model()
    x = torch.randn(30, 12)
    labels = np.zeros(30, np.int64)
    cand = np.arange(0, 30, 3)
    fused = make_ctx(model, x, labels).reduce_mc(cand, 6, F.bald)
    ctx = make_ctx(model, x, labels)
    ctx.features(np.arange(30))
    np.testing.assert_allclose(ctx.reduce_mc(cand, 6, F.bald), fused, rtol=1e-6, atol=1e-12)
    partial = make_ctx(model, x, labels)
    partial.features(cand[:2])  # some cached, some not
    np.testing.assert_allclose(partial.reduce_mc(cand, 6, F.bald), fused, rtol=1e-6, atol=1e-12)


def test_streaming_yields_bounded_batches() -> None:
    model = tiny_model()
    ctx = make_ctx(model, torch.randn(50, 12), np.zeros(50, np.int64), batch_size=16)
    shapes = [tuple(p.shape) for _, p in ctx.iter_mc(np.arange(50), 5)]
    assert shapes == [(5, 16, 4), (5, 16, 4), (5, 16, 4), (5, 2, 4)]


def test_head_and_full_mode_agree_in_distribution() -> None:
    """Only dropout before the head: head mode is exact, so both estimate the same BALD."""
    model = tiny_model(num_classes=3, d=16, seed=1)
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # make the draws disagree enough to measure
    n = 300
    x = torch.randn(n, 12)
    labels = np.zeros(n, np.int64)
    cand = np.arange(n)
    for score in ("bald", "std"):
        head = build_estimator("mcdropout", mc_samples=20, mc_score=score, mc_mode="head")
        full = build_estimator("mcdropout", mc_samples=20, mc_score=score, mc_mode="full")
        a = score_candidates(head, make_ctx(model, x, labels, batch_size=64), cand)
        b = score_candidates(full, make_ctx(model, x, labels, batch_size=64), cand)
        diff = a - b
        assert a.mean() > 0.01
        assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(n), score
        assert np.corrcoef(a, b)[0, 1] > 0.8  # the same per-sample signal


def test_full_mode_restores_eval_mode() -> None:
    model = tiny_model()
    ctx = make_ctx(model, torch.randn(8, 12), np.zeros(8, np.int64))
    ctx.reduce_mc(np.arange(8), 3, F.bald, mode="full")
    assert not any(m.training for m in model.modules())


def test_mc_needs_dropout_and_valid_options() -> None:
    model = tiny_model(p=0.0)
    ctx = make_ctx(model, torch.randn(8, 12), np.zeros(8, np.int64))
    with pytest.raises(FlexsampleError, match="dropout_p"):
        ctx.reduce_mc(np.arange(8), 3, F.bald)
    with pytest.raises(FlexsampleError, match=r"mc_samples must be >= 2, got 1"):
        ctx.reduce_mc(np.arange(8), 1, F.bald)


# -- caching ---------------------------------------------------------------------------------


def test_features_are_computed_once_across_estimators_and_parts() -> None:
    model = tiny_model()
    n = 60
    x = torch.randn(n, 12)
    labels = np.arange(n) % 4
    ctx = make_ctx(model, x, labels, batch_size=16, subset_indices=np.arange(0, n, 3))
    cand = np.setdiff1d(np.arange(n), np.arange(0, n, 3))
    score_candidates(build_estimator("mcdropout+density+prototype-cosine", mc_samples=4), ctx, cand)
    assert ctx.stats["backbone_items"] == n  # every sample through the backbone once
    assert ctx.stats["mc_items"] == len(cand)
    score_candidates(build_estimator("entropy+margin"), ctx, cand)
    ctx.features(np.arange(n))
    assert ctx.stats["backbone_items"] == n


def test_context_computes_only_what_is_declared() -> None:
    model = tiny_model()
    ctx = make_ctx(model, torch.randn(20, 12), np.zeros(20, np.int64))
    score_candidates(build_estimator("random"), ctx, np.arange(20))
    assert ctx.stats == {"backbone_items": 0, "mc_items": 0}
    score_candidates(build_estimator("entropy"), ctx, np.arange(0, 20, 2))
    assert ctx.stats == {"backbone_items": 10, "mc_items": 0}
    view = ctx.for_estimator("entropy", {"probs"})
    with pytest.raises(EstimatorError, match="'entropy' reads 'features'"):
        view.features(np.arange(3))
