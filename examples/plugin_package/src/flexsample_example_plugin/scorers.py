"""The `loss-proxy` estimator: the current model's loss on each candidate's known label.

Labels of the whole training set are known in Flexible Sampling, so the training loss of a
not-yet-used sample is a direct, cheap measure of what the model still gets wrong: one
deterministic pass, no MC dropout.
"""

from __future__ import annotations

import numpy as np

from flexsample import Estimator, ScoringContext, register_estimator


@register_estimator("loss-proxy")
class LossProxy(Estimator):
    """Cross-entropy of the known label under the current model: highest loss first."""

    needs = frozenset({"probs", "labels"})

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        probs = ctx.probs(candidates)  # (n, C) softmax of one deterministic pass
        p_true = probs[np.arange(len(candidates)), ctx.labels[candidates]]
        return -np.log(np.clip(p_true.astype(np.float64), 1e-12, 1.0))
