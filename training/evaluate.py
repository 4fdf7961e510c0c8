"""Evaluation of a model on a split, with optional post-hoc logit adjustment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from flexsample.datasets.base import Split
from flexsample.engine.distributed import Ranks

from .data import SplitLoader, predict_probs
from .metrics import classification_metrics


def adjust_probs(probs: np.ndarray, prior_counts: np.ndarray, tau: float) -> np.ndarray:
    """Logit adjustment: softmax(log p - tau * log prior), prior from training class counts."""
    if tau == 0:
        return probs
    prior = np.asarray(prior_counts, dtype=np.float64)
    prior = np.maximum(prior / max(prior.sum(), 1.0), 1e-8)
    logits = np.log(np.maximum(probs.astype(np.float64), 1e-30)) - tau * np.log(prior)
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def evaluate(
    model: nn.Module,
    split: Split,
    device: torch.device,
    groups: list[str] | None = None,
    prior_counts: np.ndarray | None = None,
    logit_adjust: float = 0.0,
    batch_size: int = 256,
    num_workers: int | None = 0,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Every metric of `classification_metrics` on `split`.

    With `logit_adjust` the metrics (AUC and calibration included) are computed on the adjusted
    probabilities, the ones whose argmax is the reported prediction. With `ranks` sharded each
    rank predicts its shard and every rank computes the metrics on the gathered probabilities
    (the same figures as one process; the caller has rank 0 report them).
    """
    loader = SplitLoader(split, False, device, num_workers)
    probs = predict_probs(model, loader, batch_size, ranks=ranks)
    if logit_adjust and prior_counts is not None:
        probs = adjust_probs(probs, prior_counts, logit_adjust)
    return classification_metrics(split.labels, probs, groups)
