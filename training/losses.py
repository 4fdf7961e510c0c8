"""Training losses, built from the class counts of the data currently trained on.

A loss is rebuilt whenever the subset's class counts change, so prior-aware losses
(class-balanced, balanced softmax, LDAM, ...) always see the current distribution.
`set_progress(epoch, epoch_budget)` lets deferred schedules (DRW) switch on late.

A class absent from the current subset (count 0) is treated as holding one sample when
priors, margins or weights are computed: it never appears as a target, and this keeps every
quantity finite without special cases.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import LOSSES as _LOSSES
from flexsample.engine.registry import Registry

FocalGamma = Annotated[float, opt("focal losses: gamma", ge=0, le=100)]
CBBeta = Annotated[float, opt("class-balanced losses: effective-number beta", ge=0, lt=1)]


class Loss(nn.Module):
    """Base: `forward(logits, targets) -> scalar`; constructed with `class_counts`."""

    name = ""
    # True when the loss assumes cosine logits (L2-normalised features and class weights)
    wants_cosine_logits = False

    def __init__(self, class_counts: np.ndarray) -> None:
        super().__init__()
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.epoch = 0
        self.epoch_budget = 1

    def set_progress(self, epoch: int, epoch_budget: int) -> None:
        self.epoch, self.epoch_budget = epoch, max(1, epoch_budget)

    @property
    def safe_counts(self) -> np.ndarray:
        """Counts with absent classes read as one sample (finite priors and weights)."""
        return np.maximum(self.class_counts, 1).astype(np.float64)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[Loss] = _LOSSES  # declared in engine.registry, with every kind


def class_balanced_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al.'s effective-number weights (1 − β) / (1 − β^n_c), scaled to sum to C."""
    if not 0.0 <= beta < 1.0:
        raise FlexsampleError(f"cb_beta must be in [0, 1), got {beta}")
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    effective = -np.expm1(n * np.log(beta)) / (1.0 - beta) if beta > 0 else np.ones_like(n)
    w = 1.0 / effective
    return w * len(w) / w.sum()


def _focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample softmax focal loss −(1 − p_t)^γ log p_t (γ = 0 is cross-entropy)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
    if gamma == 0:
        return -logp
    return -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """Plain softmax cross-entropy."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets)


@LOSSES.register("focal")
class FocalLoss(Loss):
    """Softmax focal loss (Lin et al.): down-weights easy samples by (1 − p_t)^focal_gamma."""

    def __init__(self, class_counts: np.ndarray, focal_gamma: FocalGamma = 2.0) -> None:
        super().__init__(class_counts)
        if focal_gamma < 0:
            raise FlexsampleError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.gamma = float(focal_gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _focal_terms(logits, targets, self.gamma).mean()


class _ClassBalanced(Loss):
    """Per-class weights from the effective number of samples (Cui et al., CVPR 2019)."""

    gamma = 0.0

    def __init__(self, class_counts: np.ndarray, cb_beta: CBBeta = 0.9999) -> None:
        super().__init__(class_counts)
        weights = class_balanced_weights(self.class_counts, cb_beta)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Cui et al. average w_y · loss over the batch (not divided by the sum of weights)
        per_sample = _focal_terms(logits, targets, self.gamma)
        return (self.weights.to(per_sample.device)[targets] * per_sample).mean()


@LOSSES.register("cb-softmax")
class ClassBalancedSoftmax(_ClassBalanced):
    """Softmax cross-entropy weighted per class by the inverse effective number (`cb_beta`)."""


@LOSSES.register("cb-focal")
class ClassBalancedFocal(_ClassBalanced):
    """Softmax focal loss (`focal_gamma`) weighted by the inverse effective number (`cb_beta`)."""

    def __init__(
        self, class_counts: np.ndarray, cb_beta: CBBeta = 0.9999, focal_gamma: FocalGamma = 2.0
    ) -> None:
        super().__init__(class_counts, cb_beta)
        if focal_gamma < 0:
            raise FlexsampleError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.gamma = float(focal_gamma)


@LOSSES.register("ldam")
class LDAMLoss(Loss):
    """LDAM (Cao et al., NeurIPS 2019) with deferred re-weighting (DRW).

    The target logit is lowered by a margin ∝ n_c^(−1/4), the largest being
    `ldam_max_margin`; logits are multiplied by `ldam_scale` (30 assumes cosine logits in
    [−1, 1]). From `drw_start` × the epoch budget on (default 0.8: the paper's 160 of 200
    epochs) the loss is weighted per class by class-balanced weights with `cb_beta`,
    normalised as F.cross_entropy does (divided by the batch's sum of weights).
    """

    wants_cosine_logits = True

    def __init__(
        self,
        class_counts: np.ndarray,
        ldam_max_margin: Annotated[float, opt("largest margin", gt=0, le=100)] = 0.5,
        ldam_scale: Annotated[float, opt("logit scale", gt=0, le=1000)] = 30.0,
        drw_start: Annotated[
            float, opt("fraction of the epoch budget before re-weighting", ge=0, le=1)
        ] = 0.8,
        cb_beta: CBBeta = 0.9999,
    ) -> None:
        super().__init__(class_counts)
        if ldam_max_margin < 0 or ldam_scale <= 0:
            raise FlexsampleError("ldam_max_margin must be >= 0 and ldam_scale > 0")
        if not 0.0 <= drw_start <= 1.0:
            raise FlexsampleError(f"drw_start must be in [0, 1], got {drw_start}")
        margins = self.safe_counts**-0.25
        margins = margins * (ldam_max_margin / margins.max())
        self.scale = float(ldam_scale)
        self.drw_start = float(drw_start)
        self.register_buffer("margins", torch.as_tensor(margins, dtype=torch.float32))
        weights = class_balanced_weights(self.class_counts, cb_beta)
        self.register_buffer("drw_weights", torch.as_tensor(weights, dtype=torch.float32))

    @property
    def reweighting(self) -> bool:
        return self.epoch >= self.drw_start * self.epoch_budget

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        shift = F.one_hot(targets, logits.shape[-1]).to(logits.dtype) * self.margins.to(
            logits.device
        )[targets].unsqueeze(1)
        weight = self.drw_weights.to(logits.device) if self.reweighting else None
        return F.cross_entropy(self.scale * (logits - shift), targets, weight=weight)


@LOSSES.register("grw")
class GeneralizedReweighting(Loss):
    """Generalised re-weighting (Zhang et al., Distribution Alignment, CVPR 2021).

    Class weights w_c ∝ π_c^(−`grw_exponent`) with π the class prior of the subset, scaled so
    the expected weight of a training sample, Σ π_c w_c, is 1 (the paper's ρ; 1.2 was its
    ImageNet-LT value; 1 is plain inverse-frequency re-weighting, 0 is cross-entropy).
    Normalised as F.cross_entropy does (divided by the batch's sum of weights).
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        grw_exponent: Annotated[
            float, opt("exponent of the inverse-frequency weights", ge=0, le=10)
        ] = 1.2,
    ) -> None:
        super().__init__(class_counts)
        if grw_exponent < 0:
            raise FlexsampleError(f"grw_exponent must be >= 0, got {grw_exponent}")
        prior = self.safe_counts / self.safe_counts.sum()
        w = prior ** (-float(grw_exponent))
        w = w / float((prior * w).sum())
        self.register_buffer("weights", torch.as_tensor(w, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, weight=self.weights.to(logits.device))


@LOSSES.register("balanced-softmax")
class BalancedSoftmax(Loss):
    """Balanced softmax (Ren et al., NeurIPS 2020): cross-entropy on logits + log prior.

    Only the training loss is shifted; at evaluation the plain logits estimate the balanced
    posterior, which is what balanced accuracy measures.
    """

    def __init__(self, class_counts: np.ndarray) -> None:
        super().__init__(class_counts)
        log_prior = np.log(self.safe_counts / self.safe_counts.sum())
        self.register_buffer("log_prior", torch.as_tensor(log_prior, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.log_prior.to(logits.device), targets)


def build_loss(name: str, class_counts: np.ndarray, **options: Any) -> Loss:
    """Loss `name` for the current `class_counts`, with its options (checked)."""
    return LOSSES.build(name, options, class_counts=class_counts)
