"""flexsample: Flexible Sampling for long-tailed classification.

The public names of the engine live here; training, datasets and the CLI are imported from
their own subpackages (`flexsample.training`, `flexsample.datasets`, `flexsample.cli`).
"""

from ._version import __version__
from .engine import (
    Allocation,
    Anchors,
    Curriculum,
    Estimator,
    FlexsampleError,
    PolicyState,
    Pool,
    Schedule,
    ScoringContext,
    get_allocation,
    get_anchors,
    get_estimator,
    get_policy,
    list_allocations,
    list_anchors,
    list_estimators,
    list_policies,
    register_allocation,
    register_anchors,
    register_estimator,
    register_policy,
    select_per_class,
)

__all__ = [
    "Allocation", "Anchors", "Curriculum", "Estimator", "FlexsampleError", "PolicyState", "Pool",
    "Schedule", "ScoringContext", "__version__", "get_allocation", "get_anchors", "get_estimator",
    "get_policy", "list_allocations", "list_anchors", "list_estimators", "list_policies",
    "register_allocation", "register_anchors", "register_estimator", "register_policy",
    "select_per_class",
]
