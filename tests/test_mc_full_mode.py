"""--mc-mode full: hashed masks for every dropout layer (batch size and order change nothing),
and the MC batch shrinks to a memory budget or fails naming --mc-samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.masks import HashedDropout, hashed_dropouts
from flexsample.engine.scoring import score_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators import functional as F
from flexsample.training.models import adapt_model


class Unflatten(nn.Module):
    def forward(self, x):
        return x.view(len(x), 4, 2, 3)


def backbone_dropout_model(seed: int = 0) -> nn.Module:
    """Dropout inside the backbone (elementwise, channel-wise, alpha): what full mode is for."""
    torch.manual_seed(seed)
    embedding = nn.Sequential(
        nn.Linear(12, 24),
        nn.ReLU(),
        Unflatten(),
        nn.Dropout2d(0.3),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(24, 16),
        nn.SELU(),
        nn.AlphaDropout(0.1),
    )
    head = nn.Linear(16, 5)
    with torch.no_grad():
        head.weight.mul_(3.0)
    return adapt_model(embedding, head, 0.4).eval()


def full_scores(model, x, cand, batch_size, samples=8, score="bald", **kw) -> np.ndarray:
    est = build_estimator("mcdropout", mc_samples=samples, mc_score=score, mc_mode="full")
    labels = np.zeros(len(x), np.int64)
    ctx = ScoringContext(
        model, tensor_inputs(x), labels, seed=3, step=2, batch_size=batch_size, **kw
    )
    return score_candidates(est, ctx, cand)


def test_full_mode_ignores_batch_size_and_candidate_order() -> None:
    model = backbone_dropout_model()
    x = torch.randn(90, 12)
    cand = np.arange(5, 90, 1)
    a = full_scores(model, x, cand, batch_size=7)
    b = full_scores(model, x, cand, batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    perm = np.random.default_rng(0).permutation(len(cand))
    c = full_scores(model, x, cand[perm], batch_size=13)
    np.testing.assert_allclose(c, a[perm], atol=1e-6, rtol=0)
    assert a.std() > 1e-3  # the draws really differ from sample to sample


def test_full_mode_draws_differ_and_follow_the_seed() -> None:
    model = backbone_dropout_model()
    x = torch.randn(10, 12)
    labels = np.zeros(10, np.int64)
    ctx = ScoringContext(model, tensor_inputs(x), labels, seed=1, step=1, batch_size=4)
    (_, p1), *_ = ctx.iter_mc(np.arange(10), 6, mode="full")
    assert not torch.allclose(p1[0], p1[1])  # two draws, two masks
    (_, again), *_ = ctx.iter_mc(np.arange(10), 6, mode="full")
    assert torch.equal(p1, again)
    other = ScoringContext(model, tensor_inputs(x), labels, seed=1, step=2, batch_size=4)
    (_, p2), *_ = other.iter_mc(np.arange(10), 6, mode="full")
    assert not torch.allclose(p1, p2)  # another query step, other masks
    assert not any(m.training for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules())  # forwards restored


def test_hashed_dropout_rates_and_shapes() -> None:
    masks = HashedDropout(seed=0, step=1, device="cpu")
    masks.set_samples(torch.arange(400))
    masks.set_draw(0)
    keep = masks.keep(layer=5, units=50, p=0.3)
    assert keep.shape == (400, 50)
    assert abs(keep.float().mean().item() - 0.7) < 0.02
    again = masks.keep(layer=5, units=50, p=0.3)  # the layer's second call: a fresh mask
    assert not torch.equal(keep, again)
    # channel-wise dropout zeroes whole channels
    drop2d = nn.Dropout2d(0.5)
    with hashed_dropouts(drop2d, 0, 1) as hd:
        hd.set_samples(torch.arange(6))
        hd.set_draw(0)
        out = drop2d(torch.ones(6, 8, 3, 3))
    per_channel = out.flatten(2)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1))
    assert "forward" not in drop2d.__dict__


def test_full_mode_refuses_a_layer_without_a_batch_dimension() -> None:
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x.t()).t()

    model = adapt_model(Transposed(), nn.Linear(12, 3), 0.5).eval()
    ctx = ScoringContext(
        model, tensor_inputs(torch.randn(5, 12)), np.zeros(5, np.int64), seed=0, step=1
    )
    with pytest.raises(FlexsampleError, match="--mc-mode head"):
        ctx.reduce_mc(np.arange(5), 3, F.bald, mode="full")


# -- memory ----------------------------------------------------------------------------------


def head_model() -> nn.Module:
    torch.manual_seed(0)
    return adapt_model(nn.Sequential(nn.Linear(12, 32), nn.ReLU()), nn.Linear(32, 4), 0.5).eval()


@pytest.mark.parametrize("mode", ["head", "full"])
def test_mc_batch_shrinks_to_the_memory_budget(mode: str) -> None:
    model = head_model()
    x = torch.randn(40, 12)
    labels = np.zeros(40, np.int64)
    samples = 50
    per_sample = samples * (32 * 13 + 4 * 48 if mode == "head" else 4 * 56)
    fixed = samples * 32 * 28 if mode == "head" else 0
    ctx = ScoringContext(
        model,
        tensor_inputs(x),
        labels,
        seed=0,
        step=1,
        batch_size=32,
        mc_memory=fixed + 5 * per_sample,
    )
    shapes = [tuple(p.shape) for _, p in ctx.iter_mc(np.arange(40), samples, mode=mode)]
    assert shapes[0] == (samples, 5, 4) and sum(s[1] for s in shapes) == 40
    roomy = ScoringContext(model, tensor_inputs(x), labels, seed=0, step=1, batch_size=32)
    assert [tuple(p.shape)[1] for _, p in roomy.iter_mc(np.arange(40), samples, mode=mode)] == [
        32,
        8,
    ]
    a = ctx.reduce_mc(np.arange(40), samples, F.bald, mode=mode)
    b = roomy.reduce_mc(np.arange(40), samples, F.bald, mode=mode)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["head", "full"])
def test_mc_samples_that_cannot_fit_name_the_flag(mode: str) -> None:
    """--mc-samples 10**9 used to allocate (T, batch, D) tensors until the kernel killed it."""
    model = head_model()
    ctx = ScoringContext(
        model, tensor_inputs(torch.randn(8, 12)), np.zeros(8, np.int64), seed=0, step=1
    )
    with pytest.raises(FlexsampleError) as info:
        ctx.reduce_mc(np.arange(8), 10**9, F.bald, mode=mode)
    msg = str(info.value)
    assert msg.startswith("--mc-samples 1000000000:") and "use at most --mc-samples" in msg
    assert "\n" not in msg
