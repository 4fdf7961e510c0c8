"""Anchor strategies: the starting subset of the curriculum.

Both strategies take the same per-class counts (`anchor_counts`): the imbalance ratio
r = n_max / n_min of the training split is compressed to r·s, so the anchor set is balanced
or only mildly imbalanced. They differ in which samples of a class they take.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.features import class_prototypes, l2_normalize
from flexsample.engine.interfaces import Anchors
from flexsample.engine.options import opt
from flexsample.engine.registry import register_anchors


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise FlexsampleError(
            f"classes {missing} have no training sample; anchors need every class"
        )
    return counts


def anchor_counts(counts: np.ndarray, scaling: float = 0.1, floor: int = 2) -> np.ndarray:
    """Anchors per class: min(n_c, max(m, floor(n_min · min(n_c / n_min, r·s)))).

    r = n_max / n_min, s = `scaling` in (0, 1], m = `floor`. Since n_min · r·s = s · n_max,
    each class keeps all its samples up to s · n_max (rounded down) and never fewer than m,
    nor more than it has. s = 1 keeps the whole split; with r·s <= 1 the set is balanced.

    The authors' code (FlexSampling `AnchorSelector.select`) has the same formula but
    truncates the float product `int(n_min * min(n_c / n_min, r * s))`, which sometimes
    lands just below a whole number (e.g. n_min 1, n_max 330, s 0.7: 230.99999999999997, so
    230 where the formula gives 231): there a class gets one anchor fewer. Here the
    formula's exact value is taken.
    """
    n = np.asarray(counts, dtype=np.int64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise FlexsampleError(
            f"anchor counts need a positive count for every class, got {n.tolist()}"
        )
    if not 0.0 < scaling <= 1.0:
        raise FlexsampleError(f"--anchor-scaling must be in (0, 1], got {scaling}")
    if floor < 1:
        raise FlexsampleError(f"anchor floor must be >= 1, got {floor}")
    n_min, n_max = int(n.min()), int(n.max())
    ratio = n_max / n_min
    cap = n_min * ratio * scaling  # = s · n_max: the compressed ratio times the smallest class
    per_class = np.array([math.floor(min(float(c), cap) + 1e-9) for c in n], dtype=np.int64)
    return np.minimum(n, np.maximum(int(floor), per_class))


class _CountedAnchors(Anchors):
    """Shared options and the count rule; subclasses choose `pick(members, k, ...)`."""

    def __init__(
        self,
        anchor_scaling: Annotated[
            float, opt("anchor imbalance compression s: anchors keep ratio r*s", gt=0, le=1)
        ] = 0.1,
        anchor_floor: Annotated[int, opt("minimum anchors per class", ge=1, le=1_000_000)] = 2,
    ) -> None:
        if not 0.0 < anchor_scaling <= 1.0:
            raise FlexsampleError(f"--anchor-scaling must be in (0, 1], got {anchor_scaling}")
        if anchor_floor < 1:
            raise FlexsampleError(f"anchor floor must be >= 1, got {anchor_floor}")
        self.anchor_scaling = float(anchor_scaling)
        self.anchor_floor = int(anchor_floor)

    def counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        return anchor_counts(
            class_counts(labels, num_classes), self.anchor_scaling, self.anchor_floor
        )


@register_anchors("random")
class RandomAnchors(_CountedAnchors):
    """Per class, a seeded random draw of the anchor count (the ablation of `prototype`)."""

    def select(
        self,
        labels: np.ndarray,
        num_classes: int,
        seed: int,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        k = self.counts(labels, num_classes)
        rng = np.random.default_rng([seed, 0xA2C])
        picks = [
            rng.choice(np.flatnonzero(labels == c), size=int(k[c]), replace=False)
            for c in range(num_classes)
        ]
        return np.sort(np.concatenate(picks)).astype(np.int64)


def nearest_to_prototype(features: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k rows most cosine-similar to their prototype (best first), via FAISS.

    The prototype is the mean of the L2-normalised rows; it is normalised again so inner
    products are cosines. Equal similarities keep the lower position first.
    """
    import faiss

    f = l2_normalize(features)
    k = int(min(k, len(f)))
    if k <= 0:
        return np.zeros(0, np.int64)
    protos, _ = class_prototypes(f, np.zeros(len(f), np.int64), 1)
    proto = protos.astype(np.float32)
    index = faiss.IndexFlatIP(f.shape[1])
    index.add(f)
    # rank the whole class, then break float ties by position so the choice is reproducible
    sims, ids = index.search(np.ascontiguousarray(proto), len(f))
    sims, ids = sims[0], ids[0].astype(np.int64)
    order = np.lexsort((ids, -np.round(sims, 6)))
    return ids[order[:k]]


def nearest_to_mean(features: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k rows nearest (Euclidean) to the mean of the raw rows, best first.

    The authors' rule (FlexSampling `AnchorSelector.select`: prototype = mean of the pooled
    features, not normalised; `np.linalg.norm(f - proto)`, ascending). Distances are computed
    in float64; equal distances keep the lower position first (the authors' `np.argsort` leaves
    that order unspecified).
    """
    f = np.asarray(features, dtype=np.float64)
    k = int(min(k, len(f)))
    if k <= 0:
        return np.zeros(0, np.int64)
    dist = np.linalg.norm(f - f.mean(axis=0), axis=1)
    return np.argsort(dist, kind="stable")[:k].astype(np.int64)


@register_anchors("prototype")
class PrototypeAnchors(_CountedAnchors):
    """Per class, the samples nearest to the class prototype in feature space.

    `distance` cosine (default): the prototype is the mean of the class's L2-normalised
    features and samples rank by cosine similarity to it (DESIGN.md, step 2). `distance`
    euclidean: the prototype is the mean of the raw features and samples rank by Euclidean
    distance to it, as the authors' code does. These most typical samples make a clean,
    near-balanced start. Needs a feature matrix for the whole training split
    (`training.anchor_features`).
    """

    needs_features = True

    def __init__(
        self,
        anchor_scaling: Annotated[
            float, opt("anchor imbalance compression s: anchors keep ratio r*s", gt=0, le=1)
        ] = 0.1,
        anchor_floor: Annotated[int, opt("minimum anchors per class", ge=1, le=1_000_000)] = 2,
        anchor_features: Annotated[
            Literal["auto", "pixels", "pretrained", "ssl"],
            opt(
                "features the prototypes are computed in: auto, pixels, pretrained or ssl "
                "(the run computes them; auto: pixels for tiny images, else pretrained when "
                "--pretrained is given, else ssl)"
            ),
        ] = "auto",
        distance: Annotated[
            Literal["cosine", "euclidean"],
            opt(
                "how samples rank against the class prototype: cosine (to the mean of the "
                "L2-normalised features) or euclidean (to the mean of the raw features, the "
                "authors' code)"
            ),
        ] = "cosine",
    ) -> None:
        super().__init__(anchor_scaling, anchor_floor)
        self.anchor_features = anchor_features
        if distance not in ("cosine", "euclidean"):
            raise FlexsampleError(
                f"prototype anchors: distance must be cosine or euclidean, got {distance!r}"
            )
        self.distance = distance

    def select(
        self,
        labels: np.ndarray,
        num_classes: int,
        seed: int,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        if features is None:
            raise FlexsampleError(
                "prototype anchors need features of the training split (--anchor-features)"
            )
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(labels):
            raise FlexsampleError(
                f"prototype anchors: features of shape {features.shape} do not match "
                f"{len(labels)} training labels"
            )
        if not np.isfinite(features).all():
            raise FlexsampleError("prototype anchors: features contain NaN or inf")
        k = self.counts(labels, num_classes)
        picks = []
        for c in range(num_classes):
            members = np.flatnonzero(labels == c)
            nearest = nearest_to_mean if self.distance == "euclidean" else nearest_to_prototype
            picks.append(members[nearest(features[members], int(k[c]))])
        return np.sort(np.concatenate(picks)).astype(np.int64)
