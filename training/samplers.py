"""Epoch orderings over the current subset (the re-sampling baselines plug in here)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flexsample.engine.registry import Registry

# (labels of the subset, seeded generator) -> positions into the subset for one epoch
Sampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]

SAMPLERS: Registry[np.ndarray] = Registry(
    "sampler", "flexsample.samplers", builtins="flexsample.training.samplers"
)


@SAMPLERS.register("instance")
def instance_sampler(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every sample once per epoch, shuffled."""
    return rng.permutation(len(labels))
