"""Training losses, built from the class counts of the data currently trained on.

A loss is rebuilt whenever the subset's class counts change, so prior-aware losses
(class-balanced, balanced softmax, LDAM, ...) always see the current distribution.
`set_progress(epoch, epoch_budget)` lets deferred schedules (DRW) switch on late.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from flexsample.engine.registry import Registry


class Loss(nn.Module):
    """Base: `forward(logits, targets) -> scalar`; constructed with `class_counts`."""

    name = ""

    def __init__(self, class_counts: np.ndarray) -> None:
        super().__init__()
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.epoch = 0
        self.epoch_budget = 1

    def set_progress(self, epoch: int, epoch_budget: int) -> None:
        self.epoch, self.epoch_budget = epoch, max(1, epoch_budget)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[Loss] = Registry("loss", "flexsample.losses", builtins="flexsample.training.losses")


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """Plain softmax cross-entropy."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets)


def build_loss(name: str, class_counts: np.ndarray, **params: Any) -> Loss:
    return LOSSES.create(name, class_counts=class_counts, **params)
