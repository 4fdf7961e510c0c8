"""The component registries and their timm-style helper functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .interfaces import Allocation, Anchors, Estimator, Policy
from .registry import Registry

ESTIMATORS: Registry[Estimator] = Registry(
    "estimator", "flexsample.estimators", builtins="flexsample.estimators"
)
POLICIES: Registry[Policy] = Registry(
    "policy", "flexsample.policies", builtins="flexsample.policies"
)
ALLOCATIONS: Registry[Allocation] = Registry(
    "allocation", "flexsample.allocations", builtins="flexsample.policies"
)
ANCHORS: Registry[Anchors] = Registry(
    "anchors", "flexsample.anchors", builtins="flexsample.policies"
)

# Where a run's metrics go (TensorBoard, MLflow, W&B, CSV: `flexsample.integrations.trackers`)
# and where bench cells run (local, Ray, Slurm: `flexsample.workflows.launchers`). Both are
# open like the others: a package adds one through its entry-point group.
TRACKERS: Registry[Any] = Registry(
    "tracker",
    "flexsample.trackers",
    builtins="flexsample.integrations.trackers",
    runtime=("run_dir", "log_dir", "config", "run_name", "group"),
)
LAUNCHERS: Registry[Any] = Registry(
    "launcher",
    "flexsample.launchers",
    builtins="flexsample.workflows.launchers",
    runtime=("out", "device", "gpus", "cores"),
)

# the four plugin kinds, by the `kind` word their messages use
PLUGIN_REGISTRIES: dict[str, Registry[Any]] = {
    reg.kind: reg for reg in (ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS)
}


def register_estimator(name: str | None = None) -> Callable[[type], type]:
    return ESTIMATORS.register(name)


def get_estimator(spec: str, /, **options: Any) -> Estimator:
    """The estimator `spec` names: one registered name, or several joined by '+' (ranked and
    merged as `--estimator mcdropout+density` is), with its options checked."""
    from .combine import build_estimator

    return build_estimator(spec, options)


def list_estimators() -> list[str]:
    """Registered estimator names; deprecated aliases are left out (`ESTIMATORS.aliases()`)."""
    return ESTIMATORS.names()


def register_policy(name: str | None = None) -> Callable[[type], type]:
    return POLICIES.register(name)


def get_policy(name: str, /, **options: Any) -> Policy:
    return POLICIES.create(name, **options)


def list_policies() -> list[str]:
    return POLICIES.names()


def register_allocation(name: str | None = None) -> Callable[[type], type]:
    return ALLOCATIONS.register(name)


def get_allocation(name: str, /, **options: Any) -> Allocation:
    return ALLOCATIONS.create(name, **options)


def list_allocations() -> list[str]:
    return ALLOCATIONS.names()


def register_anchors(name: str | None = None) -> Callable[[type], type]:
    return ANCHORS.register(name)


def get_anchors(name: str, /, **options: Any) -> Anchors:
    return ANCHORS.create(name, **options)


def list_anchors() -> list[str]:
    return ANCHORS.names()
