"""Moved to `flexsample.engine.combine` (a combination is engine logic: ranks of any
estimators' scores); kept so existing imports keep working."""

from flexsample.engine.combine import (  # noqa: F401
    COMBINE_MODES,
    CombinedEstimator,
    build_estimator,
    normalized_ranks,
    part_name,
)
