"""Running an estimator under its declaration and checking what it returns."""

from __future__ import annotations

import numpy as np

from .context import ScoringContext
from .errors import EstimatorError
from .interfaces import Estimator


def score_candidates(
    estimator: Estimator, ctx: ScoringContext, candidates: np.ndarray
) -> np.ndarray:
    """Scores for `candidates` (higher = take first), validated; errors name the estimator."""
    name = getattr(estimator, "name", "") or type(estimator).__name__
    view = ctx.for_estimator(name, getattr(estimator, "needs", frozenset()))
    out = estimator.score(view, np.asarray(candidates, dtype=np.int64))
    return check_scores(name, out, len(candidates))


def check_scores(name: str, out: object, n: int) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise EstimatorError(
            f"estimator '{name}' returned {type(out).__name__}; expected a numpy array of "
            f"shape ({n},)"
        )
    if out.shape != (n,):
        raise EstimatorError(
            f"estimator '{name}' returned shape {out.shape}; expected ({n},), one score "
            "per candidate"
        )
    if out.dtype == np.bool_ or not (
        np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)
    ):
        raise EstimatorError(
            f"estimator '{name}' returned dtype {out.dtype}; expected a float or integer dtype"
        )
    if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise EstimatorError(f"estimator '{name}' returned {bad} non-finite scores (NaN or inf)")
    return out.astype(np.float64, copy=False)
