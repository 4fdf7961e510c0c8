"""Kept for imports written before the registries moved into `flexsample.engine.registry`
(one module for the registry mechanism and the registries themselves); new code imports
from there."""

from .registry import *  # noqa: F403
from .registry import (  # noqa: F401
    ALLOCATIONS,
    ANCHORS,
    ESTIMATORS,
    LAUNCHERS,
    PLUGIN_REGISTRIES,
    POLICIES,
    TRACKERS,
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
)
