"""The four plugin registries and their timm-style helper functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .interfaces import Allocation, Anchors, Estimator, Schedule
from .registry import Registry

ESTIMATORS: Registry[Estimator] = Registry(
    "estimator", "flexsample.estimators", builtins="flexsample.estimators"
)
POLICIES: Registry[Schedule] = Registry(
    "policy", "flexsample.policies", builtins="flexsample.policies"
)
ALLOCATIONS: Registry[Allocation] = Registry(
    "allocation", "flexsample.allocations", builtins="flexsample.policies"
)
ANCHORS: Registry[Anchors] = Registry(
    "anchors", "flexsample.anchors", builtins="flexsample.policies"
)

# the four plugin kinds, by the `kind` word their messages use
PLUGIN_REGISTRIES: dict[str, Registry[Any]] = {
    reg.kind: reg for reg in (ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS)
}


def register_estimator(name: str | None = None) -> Callable[[type], type]:
    return ESTIMATORS.register(name)


def get_estimator(name: str, /, **options: Any) -> Estimator:
    return ESTIMATORS.create(name, **options)


def list_estimators() -> list[str]:
    """Registered estimator names; deprecated aliases are left out (`ESTIMATORS.aliases()`)."""
    return ESTIMATORS.names()


def register_policy(name: str | None = None) -> Callable[[type], type]:
    return POLICIES.register(name)


def get_policy(name: str, /, **options: Any) -> Schedule:
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
