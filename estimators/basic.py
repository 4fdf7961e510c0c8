"""First estimators: random, entropy, MC-dropout."""

from __future__ import annotations

import numpy as np
import torch

from flexsample.engine.context import MC_MODES, ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.registries import register_estimator

from . import functional as F


@register_estimator("random")
class RandomEstimator(Estimator):
    """Uniform random scores, seeded by (seed, step): the no-information baseline."""

    needs = frozenset()

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return ctx.rng.random(len(candidates))


@register_estimator("entropy")
class EntropyEstimator(Estimator):
    """Predictive entropy of one deterministic pass: most uncertain first."""

    needs = frozenset({"probs"})

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return F.entropy(torch.from_numpy(ctx.probs(candidates))).numpy()


@register_estimator("mcdropout")
class MCDropoutEstimator(Estimator):
    """BALD over T MC-dropout draws (the paper's criterion); streamed, head-only by default."""

    needs = frozenset({"mc"})

    def __init__(self, mc_samples: int = 20, mc_mode: str = "head") -> None:
        if mc_samples < 2:
            raise FlexsampleError(f"--mc-samples must be >= 2, got {mc_samples}")
        if mc_mode not in MC_MODES:
            raise FlexsampleError(f"unknown --mc-mode '{mc_mode}'; accepted: {', '.join(MC_MODES)}")
        self.mc_samples = mc_samples
        self.mc_mode = mc_mode

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return ctx.reduce_mc(candidates, self.mc_samples, F.bald, mode=self.mc_mode)
