"""Anchor strategies: the starting subset of the curriculum."""

from __future__ import annotations

import numpy as np

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Anchors
from flexsample.engine.registries import register_anchors


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise FlexsampleError(f"classes {missing} have no training sample; anchors need every class")
    return counts


@register_anchors("random")
class RandomAnchors(Anchors):
    """Per class, a seeded random draw of the tail-class count (a balanced start)."""

    def select(
        self,
        labels: np.ndarray,
        num_classes: int,
        seed: int,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        counts = class_counts(labels, num_classes)
        n = int(counts.min())
        rng = np.random.default_rng([seed, 0xA2C])
        picks = [rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c in range(num_classes)]
        return np.sort(np.concatenate(picks))
