"""The pool: which training indices are in the subset, per class, and when each entered."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FlexsampleError


class Pool:
    """Membership of the training subset over a labelled split of N samples.

    `entered[i]` is the query step at which sample i joined the subset (-1 if not yet);
    the order of entry is kept so `history()` lists samples as they joined.
    """

    def __init__(self, labels: np.ndarray, num_classes: int | None = None) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise FlexsampleError("pool labels must be a 1-d integer array")
        if len(labels) and labels.min() < 0:
            raise FlexsampleError("pool labels must be >= 0")
        self.labels = labels.astype(np.int64)
        inferred = int(self.labels.max()) + 1 if len(labels) else 0
        self.num_classes = inferred if num_classes is None else int(num_classes)
        if inferred > self.num_classes:
            raise FlexsampleError(f"label {inferred - 1} is outside the {self.num_classes} classes")
        self.entered = np.full(len(self.labels), -1, dtype=np.int64)
        self._order: list[np.ndarray] = []
        self._total = np.bincount(self.labels, minlength=self.num_classes)
        self._subset = np.zeros(self.num_classes, dtype=np.int64)
        order = np.argsort(self.labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(self._total)])
        self.class_indices = [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self._subset.sum())

    @property
    def is_full(self) -> bool:
        return self.size == len(self.labels)

    def add(self, indices: np.ndarray, step: int) -> None:
        """Move `indices` into the subset at query `step`; each index may enter only once."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= len(self.labels):
            raise FlexsampleError(f"pool indices must lie in [0, {len(self.labels)})")
        if np.unique(idx).size != idx.size:
            raise FlexsampleError("pool.add got the same index twice")
        if (self.entered[idx] >= 0).any():
            raise FlexsampleError("pool.add got indices already in the subset")
        self.entered[idx] = step
        self._order.append(idx.copy())
        self._subset += np.bincount(self.labels[idx], minlength=self.num_classes)

    def in_subset(self) -> np.ndarray:
        return self.entered >= 0

    def subset_indices(self) -> np.ndarray:
        return np.flatnonzero(self.entered >= 0)

    def remaining_indices(self, cls: int | None = None) -> np.ndarray:
        if cls is None:
            return np.flatnonzero(self.entered < 0)
        members = self.class_indices[cls]
        return members[self.entered[members] < 0]

    def subset_counts(self) -> np.ndarray:
        return self._subset.copy()

    def remaining_counts(self) -> np.ndarray:
        return self._total - self._subset

    def total_counts(self) -> np.ndarray:
        return self._total.copy()

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """(index, step) of every subset member, in order of entry."""
        if not self._order:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        idx = np.concatenate(self._order)
        return idx, self.entered[idx]

    def state_dict(self) -> dict[str, Any]:
        idx, step = self.history()
        return {"num_items": len(self.labels), "index": idx, "step": step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_items"]) != len(self.labels):
            raise FlexsampleError(
                f"pool state holds {state['num_items']} samples, this split has {len(self.labels)}"
            )
        self.entered[:] = -1
        self._order.clear()
        self._subset[:] = 0
        idx = np.asarray(state["index"], dtype=np.int64)
        step = np.asarray(state["step"], dtype=np.int64)
        for s in np.unique(step):  # steps in increasing order keep the entry order
            self.add(idx[step == s], int(s))
