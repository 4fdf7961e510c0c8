"""flexsample: Flexible Sampling for long-tailed classification.

The public names of the engine live here; training, datasets and the CLI are imported from
their own subpackages (`flexsample.training`, `flexsample.datasets`, `flexsample.cli`).
They are imported on first use (PEP 562), so `import flexsample.cli` starts without torch and
Ctrl-C during start-up can be handled.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "Allocation", "Anchors", "Curriculum", "Estimator", "FlexsampleError", "PolicyState", "Pool",
    "Schedule", "ScoringContext", "__version__", "get_allocation", "get_anchors", "get_estimator",
    "get_policy", "list_allocations", "list_anchors", "list_estimators", "list_policies",
    "register_allocation", "register_anchors", "register_estimator", "register_policy",
    "select_per_class",
]

if TYPE_CHECKING:
    from .engine import (  # noqa: F401
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


def __getattr__(name: str) -> Any:
    """The engine's public names, imported when first used."""
    if name in __all__ and name != "__version__":
        value = getattr(importlib.import_module(".engine", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
