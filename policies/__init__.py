"""Schedules, class allocations and anchor strategies (registered on import)."""

from . import allocations, anchors, schedules  # noqa: F401
from .allocations import difficulty_weights
from .anchors import anchor_counts
from .apportion import apportion

__all__ = ["anchor_counts", "apportion", "difficulty_weights"]
