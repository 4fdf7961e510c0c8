"""Long-tail losses against hand-computed values / a float64 numpy re-implementation; samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flexsample.engine.options import OptionError
from flexsample.training.losses import LOSSES, build_loss
from flexsample.training.samplers import SAMPLERS

NAMES = ["ce", "focal", "cb-focal", "cb-softmax", "ldam", "grw", "balanced-softmax"]
COUNTS = np.array([40, 9, 3, 1])


def batch(seed: int = 0, n: int = 12, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    targets = torch.arange(n) % c
    return logits.float(), targets


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_cb_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    n = np.maximum(counts, 1).astype(np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w / w.sum() * len(n)


def value(name: str, logits: torch.Tensor, y: torch.Tensor, counts=COUNTS, **kw) -> float:
    return float(build_loss(name, counts, **kw)(logits, y))


def test_all_registered() -> None:
    assert set(NAMES) <= set(LOSSES.names())
    assert {"instance", "class-balanced", "sqrt"} <= set(SAMPLERS.names())


def test_balanced_softmax_by_hand() -> None:
    # prior (3/4, 1/4), equal logits: p(y=1) = 0.25 -> loss log 4; p(y=0) = 0.75
    logits = torch.zeros(2, 2)
    assert value("balanced-softmax", logits, torch.tensor([1, 1]), [3, 1]) == pytest.approx(
        math.log(4), abs=1e-6
    )
    assert value("balanced-softmax", logits[:1], torch.tensor([0]), [3, 1]) == pytest.approx(
        -math.log(0.75), abs=1e-6
    )


def test_focal_by_hand() -> None:
    # two classes, logits (log 3, 0): p_t = 3/4 for target 0 -> (1/4)^2 * log(4/3)
    logits = torch.tensor([[math.log(3.0), 0.0]])
    got = value("focal", logits, torch.tensor([0]), [5, 5], focal_gamma=2.0)
    assert got == pytest.approx(0.0625 * math.log(4 / 3), rel=1e-5)
    assert value("focal", logits, torch.tensor([0]), [5, 5], focal_gamma=0.0) == pytest.approx(
        math.log(4 / 3), rel=1e-5
    )


def test_losses_match_numpy() -> None:
    logits, y = batch()
    z, t = logits.double().numpy(), y.numpy()
    ce = np_ce(z, t)
    p_t = np.exp(-ce)
    beta, gamma = 0.99, 1.5
    w = np_cb_weights(COUNTS, beta)

    assert value("ce", logits, y) == pytest.approx(ce.mean(), rel=1e-5)
    focal = (1 - p_t) ** gamma * ce
    assert value("focal", logits, y, focal_gamma=gamma) == pytest.approx(focal.mean(), rel=1e-5)
    assert value("cb-softmax", logits, y, cb_beta=beta) == pytest.approx(
        (w[t] * ce).mean(), rel=1e-5
    )
    assert value("cb-focal", logits, y, cb_beta=beta, focal_gamma=gamma) == pytest.approx(
        (w[t] * focal).mean(), rel=1e-5
    )

    prior = COUNTS / COUNTS.sum()
    rho = 1.2
    gw = prior**-rho / (prior ** (1 - rho)).sum()
    assert (prior * gw).sum() == pytest.approx(1.0)
    grw = (gw[t] * ce).sum() / gw[t].sum()
    assert value("grw", logits, y, grw_exponent=rho) == pytest.approx(grw, rel=1e-5)
    bs = np_ce(z + np.log(prior), t).mean()
    assert value("balanced-softmax", logits, y) == pytest.approx(bs, rel=1e-5)


def test_ldam_margins_and_drw() -> None:
    logits, y = batch(1)
    z, t = logits.double().numpy() / 10, y.numpy()  # cosine-like logits in [-1, 1]
    m = COUNTS.astype(np.float64) ** -0.25
    m = m * 0.5 / m.max()
    assert m[-1] == pytest.approx(0.5)  # the rarest class gets the largest margin
    shifted = z.copy()
    shifted[np.arange(len(t)), t] -= m[t]
    per = np_ce(30.0 * shifted, t)
    loss = build_loss("ldam", COUNTS, ldam_max_margin=0.5, ldam_scale=30.0, drw_start=0.8)
    lz = torch.as_tensor(z, dtype=torch.float32)
    loss.set_progress(7, 10)
    assert float(loss(lz, y)) == pytest.approx(per.mean(), rel=1e-4)
    loss.set_progress(8, 10)  # deferred re-weighting from 0.8 x the budget
    w = np_cb_weights(COUNTS, 0.9999)
    assert float(loss(lz, y)) == pytest.approx((w[t] * per).sum() / w[t].sum(), rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_absent_classes_stay_finite(name: str) -> None:
    counts = np.array([30, 0, 5, 0])
    logits, y = batch(2)
    logits.requires_grad_(True)
    loss = build_loss(name, counts)
    loss.set_progress(9, 10)
    out = loss(logits, y)  # targets include the absent classes 1 and 3
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()
    assert float(out.detach()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_logits_and_kwargs_filtering(name: str) -> None:
    logits, y = batch(3)
    kw = {"focal_gamma": 1.0, "cb_beta": 0.999, "ldam_scale": 10.0, "unrelated": 1}
    # options are checked now: each loss takes the ones it declares, any other is refused
    declared = LOSSES.options(name).model_fields
    out = build_loss(name, COUNTS, **{k: v for k, v in kw.items() if k in declared})(
        logits.bfloat16(), y
    )
    assert out.dtype == torch.float32 and torch.isfinite(out)
    with pytest.raises(OptionError, match=f"loss '{name}' has no option 'unrelated'; its options"):
        build_loss(name, COUNTS, **{k: v for k, v in kw.items() if k in declared}, unrelated=1)


def frequencies(name: str, labels: np.ndarray, epochs: int = 200) -> np.ndarray:
    sampler = SAMPLERS.get(name)
    rng = np.random.default_rng(7)
    hits = np.zeros(labels.max() + 1)
    for _ in range(epochs):
        pos = sampler(labels, rng)
        assert len(pos) == len(labels) and pos.min() >= 0 and pos.max() < len(labels)
        hits += np.bincount(labels[pos], minlength=len(hits))
    return hits / hits.sum()


def test_sampler_class_frequencies() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(3), [80, 16, 4]))
    assert np.allclose(frequencies("class-balanced", labels), 1 / 3, atol=0.01)
    root = np.sqrt([80, 16, 4])
    assert np.allclose(frequencies("sqrt", labels), root / root.sum(), atol=0.01)
    inst = frequencies("instance", labels, epochs=1)
    assert np.allclose(inst, [0.8, 0.16, 0.04])
    # seeded: the same generator state gives the same epoch
    for name in ("class-balanced", "sqrt"):
        s = SAMPLERS.get(name)
        a = s(labels, np.random.default_rng(3))
        b = s(labels, np.random.default_rng(3))
        assert np.array_equal(a, b)
    empty = np.zeros(0, np.int64)
    assert len(SAMPLERS.get("sqrt")(empty, np.random.default_rng(0))) == 0
