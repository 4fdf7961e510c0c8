"""Scoring estimators: each a few lines of math plus a declaration of what it needs."""

from . import basic, functional  # noqa: F401  (registers the built-ins)
from .basic import EntropyEstimator, MCDropoutEstimator, RandomEstimator

__all__ = ["EntropyEstimator", "MCDropoutEstimator", "RandomEstimator", "functional"]


def build_estimator(spec: str, **options):
    """Estimator from a CLI spec (a registered name)."""
    from flexsample.engine.registries import get_estimator

    return get_estimator(spec, **options)
