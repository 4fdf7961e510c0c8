"""Calling plugins and checking what they return, naming the plugin in every error.

The engine calls estimators, schedules, allocations and anchor strategies through
`plugin_call`: an exception raised inside a plugin becomes a one-line `PluginError` naming the
kind, the registered name, where the plugin comes from (entry point or --plugin module) and
the cause. Built-in components (code under `flexsample.*`) are called directly: a bug there is
an internal error, not the user's. Each output is then checked against its contract
(DESIGN.md, "Contracts"); a plugin's bad output is a PluginError, a built-in's an internal
error.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NoReturn

import numpy as np

from .errors import FlexsampleError, PluginError
from .interfaces import Allocation, Anchors, Policy, PolicyState
from .registry import PLUGIN_REGISTRIES, is_builtin_module, origin_text, plugin_error


def is_builtin(obj: object) -> bool:
    """Whether `obj` (a component instance) ships with flexsample."""
    return is_builtin_module(getattr(type(obj), "__module__", None))


def plugin_name(kind: str, obj: object) -> str:
    """The registered name of `obj`, else its `name` attribute, else its class name."""
    reg = PLUGIN_REGISTRIES.get(kind)
    key = reg.key_of(obj) if reg is not None else None
    return key or getattr(obj, "name", "") or type(obj).__name__


def plugin_origin(kind: str, obj: object) -> str:
    """Where `obj` comes from: entry point, --plugin module, or its module."""
    reg = PLUGIN_REGISTRIES.get(kind)
    key = reg.key_of(obj) if reg is not None else None
    if reg is not None and key is not None:
        return reg.origin(key)
    return origin_text(getattr(type(obj), "__module__", "?"), None)


def plugin_call(kind: str, obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """`obj.method(*args, **kwargs)`; a plugin's exception becomes a PluginError naming it."""
    fn = getattr(obj, method)
    if is_builtin(obj):
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        err = plugin_error(kind, plugin_name(kind, obj), plugin_origin(kind, obj), method, exc)
        if err is exc:
            raise
        raise err from exc


def fail(kind: str, obj: object, problem: str) -> NoReturn:
    """Raise for a broken output contract: PluginError for a plugin, internal for a built-in."""
    msg = f"{kind} '{plugin_name(kind, obj)}' {problem} ({plugin_origin(kind, obj)})"
    if is_builtin(obj):
        raise RuntimeError(msg)
    raise PluginError(msg)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- schedules ---------------------------------------------------------------------------------
def check_should_query(schedule: object, value: object) -> bool:
    """should_query must answer a bool (Python or NumPy): 1, None or an array are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    fail(
        "policy",
        schedule,
        f"returned {_shown(value)} ({type(value).__name__}) from should_query(); expected "
        "True or False",
    )


def check_budget(schedule: object, value: object) -> int:
    """A budget is a finite integer >= 0 (an integral float such as 5.0 is accepted)."""
    expected = "expected a finite integer >= 0 (how many samples to add)"
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        fail("policy", schedule, f"returned a bool ({value}) from budget(); {expected}")
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            fail("policy", schedule, f"returned {f!r} from budget(); {expected}")
        n = int(f)
    else:
        try:
            index: int | None = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            index = None
        if index is None:
            fail(
                "policy",
                schedule,
                f"returned {_shown(value)} ({type(value).__name__}) from budget(); {expected}",
            )
        n = index
    if n < 0:
        fail("policy", schedule, f"returned a negative budget {n} from budget(); {expected}")
    return n


def ask_should_query(schedule: Policy, state: PolicyState) -> bool:
    """The schedule's `should_query(state)`, called and checked."""
    return check_should_query(schedule, plugin_call("policy", schedule, "should_query", state))


def ask_budget(schedule: Policy, state: PolicyState) -> int:
    """The schedule's `budget(state)`, called and checked."""
    return check_budget(schedule, plugin_call("policy", schedule, "budget", state))


# -- allocations -------------------------------------------------------------------------------
def check_quotas(
    allocation: object, value: object, remaining: np.ndarray, budget: int
) -> np.ndarray:
    """Quotas are C integers, each in [0, remaining[c]], summing to at most the budget."""
    if isinstance(value, np.ndarray):
        quotas = value
    elif isinstance(value, (list, tuple)):
        quotas = np.asarray(value)
    else:
        fail(
            "allocation",
            allocation,
            f"returned {type(value).__name__} from quotas(); expected a numpy array of "
            f"integers of shape {remaining.shape}",
        )
    if quotas.shape != remaining.shape or not np.issubdtype(quotas.dtype, np.integer):
        fail(
            "allocation",
            allocation,
            f"returned {quotas.dtype} {quotas.shape}; expected integers of shape {remaining.shape}",
        )
    if (quotas < 0).any() or (quotas > remaining).any() or quotas.sum() > budget:
        fail(
            "allocation",
            allocation,
            f"returned quotas {quotas.tolist()} outside the remaining counts "
            f"{remaining.tolist()} or above the budget {budget}",
        )
    return quotas.astype(np.int64, copy=False)


def ask_quotas(
    allocation: Allocation, state: PolicyState, budget: int, remaining: np.ndarray
) -> np.ndarray:
    """The allocation's `quotas(state, budget)`, called and checked."""
    value = plugin_call("allocation", allocation, "quotas", state, budget)
    return check_quotas(allocation, value, remaining, budget)


# -- anchors -----------------------------------------------------------------------------------
def anchor_problem(value: object, n_train: int) -> tuple[str, str] | None:
    """(what was found, what is expected) when `value` is not a valid anchor set, else None."""
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}", "a numpy array of training indices"
    if value.ndim != 1:
        return f"an array of shape {value.shape}", "a 1-D array of training indices"
    if value.size == 0:
        return "no anchors", "at least one training index (an empty start trains on nothing)"
    if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.integer):
        return f"{value.dtype} anchors", "integer indices into the training split"
    lo, hi = int(value.min()), int(value.max())
    if lo < 0 or hi >= n_train:
        bad = lo if lo < 0 else hi
        return f"index {bad}", f"indices in [0, {n_train}), the training split's"
    uniq, counts = np.unique(value, return_counts=True)
    if len(uniq) != len(value):
        dup = int(uniq[np.argmax(counts > 1)])
        return f"{len(value) - len(uniq)} duplicate indices (e.g. {dup})", "distinct indices"
    return None


def check_anchors(anchors: object, value: object, n_train: int) -> np.ndarray:
    """An anchor set is a non-empty 1-D integer array of distinct indices in [0, n_train)."""
    problem = anchor_problem(value, n_train)
    if problem is not None:
        fail("anchors", anchors, f"returned {problem[0]}; expected {problem[1]}")
    return np.asarray(value).astype(np.int64, copy=False)


def check_anchor_set(value: object, n_train: int) -> np.ndarray:
    """The same checks for an anchor set handed to `Curriculum.start` by any caller."""
    problem = anchor_problem(value, n_train)
    if problem is not None:
        raise FlexsampleError(f"start(anchors) got {problem[0]}; expected {problem[1]}")
    return np.asarray(value).astype(np.int64, copy=False)


def select_anchors(
    anchors: Anchors,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """The anchor strategy's `select(...)`, called and checked: the run pipeline's anchors."""
    value = plugin_call("anchors", anchors, "select", labels, num_classes, seed, features)
    return check_anchors(anchors, value, len(labels))
