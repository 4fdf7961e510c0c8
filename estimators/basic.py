"""Uncertainty estimators: random, single-pass (entropy, margin, least confidence), MC dropout."""

from __future__ import annotations

import numpy as np
import torch

from flexsample.engine.context import MC_MODES, ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.registry import register_estimator

from . import functional as F
from .params import MCMode, MCSamples, MCScore


def check_mc_options(mc_samples: int, mc_score: str, mc_mode: str) -> None:
    """Reject bad MC options when the estimator is built, before any data is touched."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int | np.integer):
        raise FlexsampleError(f"--mc-samples must be an integer >= 2, got {mc_samples!r}")
    if mc_samples < 2:
        raise FlexsampleError(f"--mc-samples must be >= 2, got {mc_samples}")
    if mc_score not in F.MC_SCORES:
        raise FlexsampleError(
            f"unknown --mc-score '{mc_score}'; accepted: {', '.join(F.MC_SCORES)}"
        )
    if mc_mode not in MC_MODES:
        raise FlexsampleError(f"unknown --mc-mode '{mc_mode}'; accepted: {', '.join(MC_MODES)}")


@register_estimator("random")
class RandomEstimator(Estimator):
    """Uniform random scores, seeded by (seed, step): the no-information baseline."""

    needs = frozenset()

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return ctx.rng.random(len(candidates))


class ProbEstimator(Estimator):
    """A single deterministic pass: `measure` maps (N, C) probabilities to (N,) scores."""

    needs = frozenset({"probs"})

    @staticmethod
    def measure(probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return type(self).measure(torch.from_numpy(ctx.probs(candidates))).numpy()


@register_estimator("entropy")
class EntropyEstimator(ProbEstimator):
    """Predictive entropy of one deterministic pass: most uncertain first."""

    measure = staticmethod(F.entropy)


@register_estimator("margin")
class MarginEstimator(ProbEstimator):
    """1 - (p1 - p2) of one deterministic pass: smallest top-2 margin first."""

    measure = staticmethod(F.margin)


@register_estimator("least-confidence")
class LeastConfidenceEstimator(ProbEstimator):
    """1 - p_max of one deterministic pass: least confident first."""

    measure = staticmethod(F.least_confidence)


@register_estimator("mcdropout")
class MCDropoutEstimator(Estimator):
    """MC-dropout uncertainty over T draws (BALD by default, the paper's criterion).

    `mc_score`: bald | entropy | variation-ratio | std (see `functional.MC_SCORES`).
    `mc_mode`: head (backbone once, masks on the pooled features; exact when the only
    dropout is before the head) or full (T complete stochastic passes). Streamed: memory
    stays O(N * C) whatever T is.
    """

    needs = frozenset({"mc"})

    def __init__(
        self, mc_samples: MCSamples = 20, mc_score: MCScore = "bald", mc_mode: MCMode = "head"
    ) -> None:
        check_mc_options(mc_samples, mc_score, mc_mode)
        self.mc_samples = int(mc_samples)
        self.mc_score = mc_score
        self.mc_mode = mc_mode

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        reducer = F.MC_SCORES[self.mc_score]
        return ctx.reduce_mc(candidates, self.mc_samples, reducer, mode=self.mc_mode)
