"""Decoupled classifier learning (Kang et al. 2020, "Decoupling representation and classifier").

Stage 1 is any trained model; stage 2 keeps its backbone frozen and only re-balances the linear
head. The pieces here are pure functions on feature arrays and heads, so each is testable
against a hand computation:

- cRT: a freshly initialised (seeded) head trained with class-balanced sampling;
- LWS: the stage-1 head kept, a per-class scale f_c (init 1) on its logits learned with
  class-balanced sampling: as the authors run it (facebookresearch/classifier-balancing,
  `config/*/cls_lws.yaml`, `models/TauNormClassifier.py`), a fixed number of epochs of SGD with
  momentum and weight decay on the scales, so the result is a function of (features, labels,
  head, seed) whether or not the stage-1 logits separate the training split;
- tau-norm: w_c / ||w_c||^tau with the bias dropped (as in the paper), tau from the authors'
  grid (`tau_norm.py`: `np.linspace(0, 2, 21)`, 0 to 2 in steps of 0.1) chosen on the
  validation balanced accuracy (ties -> the smaller tau) or given.

Features are extracted once, in eval mode and without augmentation: the backbone is frozen, so
a pass per epoch would only add augmentation noise (the paper's cRT re-samples augmented images;
with cached features stage 2 costs one forward pass of the backbone instead of one per epoch).
Every result is an `nn.Linear` of the stage-1 head's shape, so the model keeps its
architecture and checkpoint format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .samplers import class_balanced_sampler

METHODS = ("crt", "lws", "tau-norm")
# the authors' sweep (classifier-balancing tau_norm.py: np.linspace(0, 2, 21)): 0, 0.1, ..., 2
TAU_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))
# LWS as the authors' cls_lws.yaml trains it: 5 epochs, SGD lr 0.2 (ImageNet-LT, iNaturalist;
# Places-LT 0.1), momentum 0.9, weight decay 5e-4 (ImageNet-LT, Places-LT; iNaturalist 1e-4) on
# the scales, cosine to 0, class-aware sampling
LWS_EPOCHS = 5
LWS_LR = 0.2
LWS_MOMENTUM = 0.9
LWS_WEIGHT_DECAY = 5e-4
_SEED_KEY = 0xDEC0  # separates stage-2 random streams from the curriculum's


# --- small helpers -------------------------------------------------------------------------
def balanced_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `labels` (absent classes are left out)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    support = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[preds == labels], minlength=num_classes)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((hits[present] / support[present]).mean())


def linear_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A detached float32 CPU `nn.Linear` holding `weight` (C, D) and `bias` (C,) or no bias
    (a zero bias: the head keeps the model's parameter layout). The global random generator
    is left untouched."""
    c, d = weight.shape
    head = nn.utils.skip_init(nn.Linear, d, c)  # no draw from the global generator
    with torch.no_grad():
        head.weight.copy_(weight.detach().float().cpu())
        head.bias.copy_(torch.zeros(c) if bias is None else bias.detach().float().cpu())
    return head


def install_head(model: nn.Module, head: nn.Linear) -> None:
    """Copy `head`'s parameters into `model.head` in place (same module object: a timm model
    whose classifier is also registered inside its backbone keeps one head, and state_dict
    keys stay those of the stage-1 checkpoint)."""
    target = model.head
    if tuple(target.weight.shape) != tuple(head.weight.shape):
        raise ValueError(
            f"head shape {tuple(head.weight.shape)} != model head {tuple(target.weight.shape)}"
        )
    with torch.no_grad():
        target.weight.copy_(head.weight.to(target.weight))
        if target.bias is not None:
            target.bias.copy_(head.bias.to(target.bias))


def _logits(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out = features @ weight.T
    return out if bias is None else out + bias


# --- tau-normalisation ---------------------------------------------------------------------
def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_c / ||w_c||^tau per class row (a zero row stays zero)."""
    w = weight.detach().float()
    norms = w.norm(dim=1, keepdim=True)
    scale = torch.where(norms > 0, norms.clamp_min(1e-12) ** tau, torch.ones_like(norms))
    return w / scale


def tau_norm_head(head: nn.Linear, tau: float) -> nn.Linear:
    """The tau-normalised head: normalised weights, bias dropped (zero), as in the paper."""
    return linear_copy(tau_normalize(head.weight, tau), None)


def tau_scores(
    weight: torch.Tensor,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    grid: tuple[float, ...] = TAU_GRID,
    logit_offset: np.ndarray | None = None,
) -> dict[float, float]:
    """Balanced accuracy of the tau-normalised head (no bias) on (features, labels) per tau.

    `logit_offset` (C,) is subtracted from the logits first (post-hoc logit adjustment, so the
    choice sees the predictions the evaluation will report)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    offset = None if logit_offset is None else torch.as_tensor(logit_offset, dtype=torch.float32)
    scores = {}
    for tau in grid:
        logits = _logits(x, tau_normalize(weight.cpu(), tau), None)
        if offset is not None:
            logits = logits - offset
        scores[float(tau)] = balanced_accuracy(labels, logits.argmax(1).numpy(), num_classes)
    return scores


def choose_tau(scores: dict[float, float]) -> float:
    """The tau of the highest score; ties (and NaN scores, ranked last) go to the smaller tau."""
    best_tau, best = None, -np.inf
    for tau in sorted(scores):
        s = scores[tau]
        s = -np.inf if np.isnan(s) else s
        if best_tau is None or s > best:
            best_tau, best = tau, s
    if best_tau is None:
        raise ValueError("no tau to choose from")
    return float(best_tau)


# --- class-balanced training on cached features --------------------------------------------
def epoch_order(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One epoch of class-balanced draws (len(labels) positions; each draw picks a class
    uniformly, then a member uniformly), determined by (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch), _SEED_KEY])
    return class_balanced_sampler(labels, rng)


def init_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """A fresh head with nn.Linear's default distribution (U(-1/sqrt(D), 1/sqrt(D))), drawn
    from its own generator: the global torch RNG (dropout) is left untouched."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + _SEED_KEY)
    bound = 1.0 / np.sqrt(max(in_features, 1))
    weight = (torch.rand(num_classes, in_features, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(num_classes, generator=gen) * 2 - 1) * bound
    return linear_copy(weight, bias)


@dataclass
class StageResult:
    """A stage-2 head and how it was obtained (`losses`: crt, mean loss per epoch; lws, the
    class-balanced loss before and after)."""

    head: nn.Linear
    method: str
    tau: float | None = None
    tau_scores: dict[float, float] = field(default_factory=dict)
    scales: np.ndarray | None = None
    losses: list[float] = field(default_factory=list)


def _fit(
    params: list[torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    features: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Cross-entropy on class-balanced batches of cached features: AdamW, cosine per step."""
    x_all = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    n = len(labels)
    steps_per_epoch = max(1, -(-n // batch_size))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    losses = []
    for epoch in range(epochs):
        order = torch.as_tensor(epoch_order(labels, seed, epoch), device=device)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(forward(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(n, 1))
        if progress is not None:
            progress(1)
    return losses


def train_crt(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> StageResult:
    """cRT: a re-initialised (seeded) head trained on class-balanced batches of the features."""
    device = torch.device(device)
    head = init_head(np.shape(features)[1], num_classes, seed).to(device)
    losses = _fit(
        list(head.parameters()),
        head,
        features,
        labels,
        epochs,
        batch_size,
        lr,
        weight_decay,
        seed,
        device,
        progress,
    )
    return StageResult(linear_copy(head.weight, head.bias), "crt", losses=losses)


def lws_logits(features: torch.Tensor, head: nn.Linear, scales: torch.Tensor) -> torch.Tensor:
    """f_c * (w_c x + b_c): the stage-1 logits, scaled per class."""
    return _logits(features, head.weight, head.bias) * scales


def lws_head(head: nn.Linear, scales: torch.Tensor | np.ndarray) -> nn.Linear:
    """The head whose logits are f_c * (w_c x + b_c): rows and biases scaled by f_c."""
    f = torch.as_tensor(np.asarray(scales, dtype=np.float32)).reshape(-1, 1)
    w = head.weight.detach().float().cpu()
    b = None if head.bias is None else head.bias.detach().float().cpu() * f[:, 0]
    return linear_copy(w * f, b)


def class_balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights 1 / (C' n_c) (C' = classes present): the expected loss of
    class-balanced sampling written as a weighted mean over the whole split."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    return 1.0 / (present * counts[labels])


def class_balanced_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """The expected cross-entropy of class-balanced sampling: sum_i w_i CE(logits_i, y_i)."""
    per = nn.functional.cross_entropy(logits, labels, reduction="none")
    return float((per * weights).sum())


def train_lws(
    features: np.ndarray,
    labels: np.ndarray,
    head: nn.Linear,
    *,
    epochs: int = LWS_EPOCHS,
    batch_size: int = 512,
    lr: float = LWS_LR,
    momentum: float = LWS_MOMENTUM,
    weight_decay: float = LWS_WEIGHT_DECAY,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> StageResult:
    """LWS: the stage-1 head frozen, one logit scale per class (init 1) trained as the authors
    do: `epochs` epochs of cross-entropy on class-balanced batches (`epoch_order`, the same
    draws as cRT's), SGD with `momentum` and L2 `weight_decay` on the scales, the learning rate
    on a cosine from `lr` to 0 over the steps (ceil(n / batch_size) per epoch).

    A fixed number of steps from f = 1, with weight decay, makes the scales a function of the
    inputs and the seed. Minimising the class-balanced loss to convergence, as this did before,
    is not: when the stage-1 logits separate the training split (the usual case) the loss has
    no finite minimiser and the scales depended on where the solver stopped.

    The stage-1 logits are computed once on `device` (float64); the C scales are then trained
    in float64 on the CPU (deterministic, and the same whatever the device). Differences from the
    authors' code: a cosine per step rather than per epoch, our class-balanced sampler (a
    class drawn uniformly per sample) rather than their 4-per-class class-aware batches, and
    no per-epoch selection on validation. `losses` is the class-balanced loss over the whole
    split before and after.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"lws needs epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    fixed = linear_copy(head.weight, head.bias)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=torch.device(device))
    with torch.no_grad():
        w, b = fixed.weight.to(x.device).double(), fixed.bias.to(x.device).double()
        z = _logits(x.double(), w, b).cpu()
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    cb = torch.as_tensor(class_balanced_weights(labels, fixed.out_features))
    n = len(y)
    steps = max(1, -(-n // batch_size))
    scales = torch.ones(fixed.out_features, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([scales], lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    with torch.no_grad():
        before = class_balanced_loss(z * scales, y, cb)
    for epoch in range(epochs):
        order = torch.as_tensor(epoch_order(labels, seed, epoch))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(z[idx] * scales, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(1)
    with torch.no_grad():
        after = class_balanced_loss(z * scales, y, cb)
    f = scales.detach().numpy().astype(np.float64)
    return StageResult(lws_head(fixed, f), "lws", scales=f, losses=[before, after])


def tau_norm(
    head: nn.Linear,
    num_classes: int,
    tau: float | None = None,
    val_features: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    grid: tuple[float, ...] = TAU_GRID,
    logit_offset: np.ndarray | None = None,
) -> StageResult:
    """tau-norm with the given tau, or the grid's best on the validation features."""
    scores: dict[float, float] = {}
    if tau is None:
        if val_features is None or val_labels is None:
            raise ValueError("tau-norm without a tau needs validation features to choose it")
        scores = tau_scores(head.weight, val_features, val_labels, num_classes, grid, logit_offset)
        tau = choose_tau(scores)
    return StageResult(tau_norm_head(head, tau), "tau-norm", tau=float(tau), tau_scores=scores)
