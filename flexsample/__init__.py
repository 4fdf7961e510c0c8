"""flexsample: Flexible Sampling for long-tailed classification.

The public names of the engine live here, with the notebook API (`run`, `bench`, `RunConfig`,
`RunResult`); training, datasets and the CLI are imported from their own subpackages
(`flexsample.training`, `flexsample.datasets`, `flexsample.cli`). They are imported on first
use (PEP 562), so `import flexsample` and `import flexsample.cli` start without torch and
Ctrl-C during start-up can be handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

__all__ = [
    "Allocation",
    "Anchors",
    "Curriculum",
    "Estimator",
    "FlexsampleError",
    "PolicyState",
    "Pool",
    "RunConfig",
    "RunResult",
    "Policy",
    "ScoringContext",
    "__version__",
    "bench",
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
    "run",
    "select_per_class",
]

# name -> the module it comes from, for the names that are not the engine's
_WORKFLOWS = {".workflows.config": ("RunConfig",), ".workflows.api": ("RunResult", "bench", "run")}

if TYPE_CHECKING:
    from .engine import (  # noqa: F401
        Allocation,
        Anchors,
        Curriculum,
        Estimator,
        FlexsampleError,
        Policy,
        PolicyState,
        Pool,
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
    from .workflows.api import RunResult, bench, run  # noqa: F401
    from .workflows.config import RunConfig  # noqa: F401


def _from_workflows(name: str) -> bool:
    return any(name in names for names in _WORKFLOWS.values())


__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".engine": [
            *(n for n in __all__ if n != "__version__" and not _from_workflows(n)),
            "Schedule",  # the deprecated name of Policy: one FutureWarning
        ],
        **_WORKFLOWS,
    },
    __all__,
)
