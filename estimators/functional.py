"""Uncertainty measures as small pure functions on probability tensors.

`probs` is (..., C) for single-pass measures and (T, N, C) for MC measures; every function
returns one value per sample. Natural logarithms; 0 * log 0 = 0.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(p) = -sum_c p_c log p_c over the last axis."""
    p = probs.double()
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


def bald(mc_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between prediction and weights: H(mean_t p_t) - mean_t H(p_t)."""
    p = mc_probs.double()
    mi = entropy(p.mean(0)) - entropy(p).mean(0)
    return mi.clamp_min(0.0)  # tiny negative values are rounding
