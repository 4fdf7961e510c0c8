"""Uncertainty measures as small pure functions on probability tensors.

Single-pass measures take `probs` of shape (..., C); MC measures take the T stochastic
draws of shape (T, N, C). Every function returns one value per sample as float64 (computed
in float64, so float32 inputs lose nothing to accumulation). Natural logarithms;
0 * log 0 = 0. Higher = more uncertain, so each can be used as a score directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_EPS = 1e-12


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(p) = -sum_c p_c log p_c over the last axis."""
    p = probs.double()
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """1 - (p_(1) - p_(2)): one minus the gap between the two most probable classes."""
    p = probs.double()
    if p.shape[-1] < 2:  # one class: the runner-up probability is 0
        return 1.0 - p[..., 0]
    top2 = torch.topk(p, 2, dim=-1).values
    return 1.0 - (top2[..., 0] - top2[..., 1])


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - max_c p_c."""
    return 1.0 - probs.double().amax(-1)


def bald(mc_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between prediction and weights: H(mean_t p_t) - mean_t H(p_t)."""
    p = mc_probs.double()
    mi = entropy(p.mean(0)) - entropy(p).mean(0)
    return mi.clamp_min(0.0)  # tiny negative values are rounding


def predictive_entropy(mc_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction, H(mean_t p_t): total (not only epistemic) uncertainty."""
    return entropy(mc_probs.double().mean(0))


def variation_ratio(mc_probs: torch.Tensor) -> torch.Tensor:
    """1 - f_m / T, with f_m the number of draws whose arg-max is the modal class.

    Ties inside a draw go to the lower class index (torch.argmax); ties between modal
    classes do not matter, since only the modal count enters.
    """
    t, _, c = mc_probs.shape
    votes = torch.nn.functional.one_hot(mc_probs.argmax(-1), c).sum(0)  # (N, C)
    return 1.0 - votes.amax(-1).double() / t


def mean_std(mc_probs: torch.Tensor) -> torch.Tensor:
    """Mean over classes of the per-class standard deviation across draws (population, ddof 0)."""
    return mc_probs.double().std(0, correction=0).mean(-1)


# --mc-score name -> (T, N, C) -> (N,)
MC_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bald": bald,
    "entropy": predictive_entropy,
    "variation-ratio": variation_ratio,
    "std": mean_std,
}

# single deterministic pass: (N, C) -> (N,)
PROB_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": entropy,
    "margin": margin,
    "least-confidence": least_confidence,
}
