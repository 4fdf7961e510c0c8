"""Feature-space primitives shared by the components that work on pooled features: row
normalisation and class prototypes (the anchors' starting subset and the prototype-cosine
estimator use the same definition of a prototype, from here)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous, row-normalised copy (all-zero rows stay zero)."""
    import faiss

    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.size:
        faiss.normalize_L2(out)
    return out


def class_prototypes(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) class prototypes, and which classes had rows.

    The prototype of class c is the mean of its L2-normalised rows, normalised again so that
    inner products with normalised rows are cosines (DESIGN.md, method step 2). Accumulated in
    float64 so the result does not depend on the order of the rows.
    """
    f = l2_normalize(features).astype(np.float64)
    sums = np.zeros((num_classes, f.shape[1]), dtype=np.float64)
    np.add.at(sums, np.asarray(labels, dtype=np.int64), f)
    present = np.bincount(labels, minlength=num_classes)[:num_classes] > 0
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, 1e-12), present
