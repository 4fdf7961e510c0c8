"""Epoch orderings over the current subset (the re-sampling baselines plug in here).

A sampler maps (labels of the subset, seeded generator) to positions into the subset for
one epoch. The re-sampling samplers draw as many positions as the subset holds, so an epoch
costs the same whatever the sampler: a class is drawn with probability ∝ n_c^q, then a
sample uniformly within it (with replacement).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flexsample.engine.registry import SAMPLERS as _SAMPLERS
from flexsample.engine.registry import Registry

# (labels of the subset, seeded generator) -> positions into the subset for one epoch
Sampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]

SAMPLERS: Registry[np.ndarray] = _SAMPLERS  # declared in engine.registry, with every kind


@SAMPLERS.register("instance")
def instance_sampler(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every sample once per epoch, shuffled."""
    return rng.permutation(len(labels))


def class_power_sampler(labels: np.ndarray, rng: np.random.Generator, q: float) -> np.ndarray:
    """len(labels) positions; class c drawn with probability ∝ n_c^q, then a uniform member.

    q = 0 is class-balanced, q = 1/2 square-root, q = 1 instance sampling with replacement.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    p = counts.astype(np.float64) ** q
    p /= p.sum()
    by_class = np.argsort(labels, kind="stable")  # positions grouped by class, class order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    drawn = rng.choice(len(classes), size=n, p=p)
    within = np.floor(rng.random(n) * counts[drawn]).astype(np.int64)
    within = np.minimum(within, counts[drawn] - 1)
    return by_class[starts[drawn] + within]


@SAMPLERS.register("class-balanced")
def class_balanced_sampler(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every class equally likely per draw (re-sampling, RS), as many draws as samples."""
    return class_power_sampler(labels, rng, 0.0)


@SAMPLERS.register("sqrt")
def sqrt_sampler(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Classes drawn ∝ sqrt(n_c): halfway between instance and class-balanced sampling."""
    return class_power_sampler(labels, rng, 0.5)


@SAMPLERS.register("class-aware")
def class_aware_sampler(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The authors' class-aware sampler (FlexSampling `ClassAwareSampler`, after OLTR): as many
    draws as samples, in cycles that visit every class once in a fresh random order, each class
    yielding the next member of its own shuffled stream (a new shuffle each time it runs out).

    Class-uniform like `class-balanced`, but stratified: every class appears once per cycle of
    K draws (not i.i.d. draws), and a class's members repeat only after all have been drawn
    (not with replacement). (The authors fall back to a plain shuffle when the subset is no
    larger than a batch; a sampler here does not know the batch size and stays class-aware.)
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    classes = np.unique(labels)
    k = len(classes)
    cycles = -(-n // k)
    # each row a fresh random order of the classes, read row by row and cut to n draws
    drawn = np.argsort(rng.random((cycles, k)), axis=1, kind="stable").ravel()[:n]
    out = np.empty(n, np.int64)
    for j, c in enumerate(classes):
        slots = np.flatnonzero(drawn == j)
        if len(slots) == 0:
            continue
        members = np.flatnonzero(labels == c)
        reps = -(-len(slots) // len(members))
        stream = np.argsort(rng.random((reps, len(members))), axis=1, kind="stable").ravel()
        out[slots] = members[stream[: len(slots)]]
    return out
