"""Kept for imports written before the registries moved into `flexsample.engine.registry`
(one module for the registry mechanism and the registries themselves); new code imports
from there."""

from .registry import *  # noqa: F403
