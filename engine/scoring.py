"""Running an estimator under its declaration and checking what it returns."""

from __future__ import annotations

import numpy as np

from .context import ScoringContext
from .errors import EstimatorError, ParameterError
from .interfaces import Estimator
from .validation import is_builtin, plugin_call, plugin_origin


def score_candidates(
    estimator: Estimator, ctx: ScoringContext, candidates: np.ndarray
) -> np.ndarray:
    """Scores for `candidates` (higher = take first), validated; errors name the estimator.

    A plugin's exception becomes a PluginError naming it and where it comes from.
    """
    name = getattr(estimator, "name", "") or type(estimator).__name__
    view = ctx.for_estimator(name, getattr(estimator, "needs", frozenset()))
    out = plugin_call("estimator", estimator, "score", view, np.asarray(candidates, np.int64))
    origin = None if is_builtin(estimator) else plugin_origin("estimator", estimator)
    return check_scores(name, out, len(candidates), origin=origin)


def check_scores(name: str, out: object, n: int, *, origin: str | None = None) -> np.ndarray:
    """`out` as float64 scores if it is a finite (n,) float or integer array.

    `origin` (where a plugin comes from) is added to the message when given.
    """
    where = f" ({origin})" if origin else ""
    if not isinstance(out, np.ndarray):
        raise EstimatorError(
            f"estimator '{name}' returned {type(out).__name__}; expected a numpy array of "
            f"shape ({n},){where}"
        )
    if out.shape != (n,):
        raise EstimatorError(
            f"estimator '{name}' returned shape {out.shape}; expected ({n},), one score "
            f"per candidate{where}"
        )
    if out.dtype == np.bool_ or not (
        np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)
    ):
        raise EstimatorError(
            f"estimator '{name}' returned dtype {out.dtype}; expected a float or integer "
            f"dtype{where}"
        )
    if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise EstimatorError(
            f"estimator '{name}' returned {bad} non-finite scores (NaN or inf){where}"
        )
    return out.astype(np.float64, copy=False)


def is_selector(estimator: object) -> bool:
    """Whether `estimator` picks its own batch (implements `select`) instead of top-k scores."""
    return callable(getattr(estimator, "select", None))


def select_candidates(
    estimator: Estimator, ctx: ScoringContext, candidates: np.ndarray, k: int
) -> np.ndarray:
    """A selector's k picks among `candidates` (one class's), validated; in pick order.

    A plugin's exception becomes a PluginError naming it and where it comes from.
    """
    name = getattr(estimator, "name", "") or type(estimator).__name__
    view = ctx.for_estimator(name, getattr(estimator, "needs", frozenset()))
    candidates = np.asarray(candidates, np.int64)
    out = plugin_call("estimator", estimator, "select", view, candidates, int(k))
    origin = None if is_builtin(estimator) else plugin_origin("estimator", estimator)
    return check_selection(name, out, candidates, int(k), origin=origin)


def check_selection(
    name: str, out: object, candidates: np.ndarray, k: int, *, origin: str | None = None
) -> np.ndarray:
    """`out` as int64 if it holds exactly k distinct members of `candidates`."""
    where = f" ({origin})" if origin else ""
    expected = f"expected a numpy integer array of {k} distinct candidates"
    if not isinstance(out, np.ndarray):
        raise EstimatorError(
            f"estimator '{name}' select returned {type(out).__name__}; {expected}{where}"
        )
    if out.dtype == np.bool_ or not np.issubdtype(out.dtype, np.integer):
        raise EstimatorError(
            f"estimator '{name}' select returned dtype {out.dtype}; {expected}{where}"
        )
    if out.shape != (k,):
        raise EstimatorError(
            f"estimator '{name}' select returned shape {out.shape}; {expected}{where}"
        )
    picks = out.astype(np.int64, copy=False)
    if len(np.unique(picks)) != k:
        raise EstimatorError(
            f"estimator '{name}' select returned a candidate twice; {expected}{where}"
        )
    outside = picks[~np.isin(picks, candidates)]
    if len(outside):
        raise EstimatorError(
            f"estimator '{name}' select returned {int(outside[0])}, which is not one of the "
            f"candidates; {expected}{where}"
        )
    return picks


def check_acquisition(acquisition: str, estimator: object) -> None:
    """One-line errors for an unknown --acquisition, or a stochastic one with a selector."""
    from .selection import ACQUISITIONS

    if acquisition not in ACQUISITIONS:
        raise ParameterError(
            f"unknown acquisition '{acquisition}'; accepted: {', '.join(ACQUISITIONS)}",
            "acquisition",
        )
    if acquisition != "topk" and is_selector(estimator):
        raise ParameterError(
            f"acquisition {acquisition} draws from per-sample scores, but estimator "
            f"'{getattr(estimator, 'name', '')}' selects its own batch; use acquisition "
            "topk with it",
            "acquisition",
        )
