"""The sampling engine: pool, selection, scoring context, curriculum loop, registries.

It knows nothing of images, datasets, training recipes or the CLI: a user with their own
training loop drives pool + policy + allocation + estimator directly.

Names are imported from their submodules on first use (PEP 562): `flexsample.engine.errors`
and the registries stay free of torch, so the command line starts quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flexsample._lazy import lazy_exports

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, save_atomic
    from .context import ScoringContext, tensor_inputs
    from .errors import EstimatorError, FlexsampleError, UnknownNameError
    from .interfaces import (
        Allocation,
        Anchors,
        EpochResult,
        Estimator,
        Learner,
        ModelLike,
        Policy,
        PolicyState,
        ValRecord,
    )
    from .loop import Callback, Curriculum, LoopResult, QueryResult, StepRecord
    from .pool import Pool
    from .registry import (
        ALLOCATIONS,
        ANCHORS,
        ESTIMATORS,
        POLICIES,
        Registry,
        get_allocation,
        get_anchors,
        get_estimator,
        get_policy,
        import_plugin,
        list_allocations,
        list_anchors,
        list_estimators,
        list_policies,
        register_allocation,
        register_anchors,
        register_estimator,
        register_policy,
    )
    from .scoring import score_candidates
    from .selection import select_per_class, top_k

_SOURCES: dict[str, tuple[str, ...]] = {
    ".checkpoint": ("load_checkpoint", "save_atomic"),
    ".context": ("ScoringContext", "tensor_inputs"),
    ".errors": ("EstimatorError", "FlexsampleError", "UnknownNameError"),
    ".interfaces": (
        "Allocation",
        "Anchors",
        "EpochResult",
        "Estimator",
        "Learner",
        "ModelLike",
        "PolicyState",
        "Policy",
        "ValRecord",
        "Schedule",  # the deprecated name of Policy: one FutureWarning
    ),
    ".loop": ("Callback", "Curriculum", "LoopResult", "QueryResult", "StepRecord"),
    ".pool": ("Pool",),
    ".registry": (
        "ALLOCATIONS",
        "ANCHORS",
        "ESTIMATORS",
        "POLICIES",
        "get_allocation",
        "get_anchors",
        "get_estimator",
        "get_policy",
        "list_allocations",
        "list_anchors",
        "list_estimators",
        "list_policies",
        "register_allocation",
        "register_anchors",
        "register_estimator",
        "register_policy",
        "Registry",
        "import_plugin",
    ),
    ".scoring": ("score_candidates",),
    ".selection": ("select_per_class", "top_k"),
}

__all__ = [
    "ALLOCATIONS",
    "ANCHORS",
    "ESTIMATORS",
    "POLICIES",
    "Allocation",
    "Anchors",
    "Callback",
    "Curriculum",
    "EpochResult",
    "Estimator",
    "EstimatorError",
    "FlexsampleError",
    "Learner",
    "LoopResult",
    "ModelLike",
    "PolicyState",
    "Pool",
    "QueryResult",
    "Registry",
    "Policy",
    "ScoringContext",
    "StepRecord",
    "UnknownNameError",
    "ValRecord",
    "get_allocation",
    "get_anchors",
    "get_estimator",
    "get_policy",
    "import_plugin",
    "list_allocations",
    "list_anchors",
    "list_estimators",
    "list_policies",
    "load_checkpoint",
    "register_allocation",
    "register_anchors",
    "register_estimator",
    "register_policy",
    "save_atomic",
    "score_candidates",
    "select_per_class",
    "tensor_inputs",
    "top_k",
]


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
