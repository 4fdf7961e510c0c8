"""Schedules, class allocations and anchor strategies (registered on import)."""

from . import allocations, anchors, schedules  # noqa: F401
from .apportion import apportion

__all__ = ["apportion"]
