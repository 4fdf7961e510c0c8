"""The training consumer of the engine: a `Learner` over a dataset's train/val splits.

Seeded data order per epoch; bf16 autocast and channels_last on CUDA. Losses and samplers
come from their registries and are rebuilt from the class counts of the subset being trained on.

The optimizer and learning rate at a round start or query (`restart`): `fresh` builds a new
AdamW and a cosine over the round's remaining epochs; `warm` keeps the AdamW moments and only
restarts the cosine (warm restarts, SGDR-like); `none` keeps one AdamW and one cosine over the
whole epoch budget. `lr_subset_scale` Q makes a round's peak rate lr x (n / N)^Q, n the subset
and N the full training set, so small early subsets take smaller steps (with `none`, each
epoch's rate is scaled by its subset instead). A round's optimizer is built at its first
epoch, where the subset is known.

`optimizer` adamw (default) or sgd: SGD with `momentum` and `weight_decay` (L2, coupled),
no Nesterov, as the authors' FlexSampling trainer; `restart` applies to either (warm keeps
SGD's momentum buffers). `cosine` (with `restart` none only): epochs (default) steps the one
cosine once per epoch over the epoch budget; steps steps it after every batch over
epoch_budget x ceil(N / batch_size) steps, N the full training set (or `samples_per_epoch`),
the authors' schedule: an epoch on a small early subset has few batches and uses little of
the cosine, nothing resets it at a query, and training on the full set from the start ends
at rate 0. (The authors count floor(N / batch_size) steps an epoch, their loader dropping a
last partial batch; here a partial batch trains, so an epoch of N samples takes the ceil.)

An epoch is one pass of the sampler over the subset, or with `samples_per_epoch` (the
`--budget samples` of a run: the full training set's size) that many samples: the sampler's
order over the subset drawn again and again (each repetition its own seeded draw) and cut to
length, so a curriculum on a small subset trains more passes on it and every method
processes the same number of samples per epoch. `EpochResult.extra["samples"]` counts the
samples trained on (a skipped lone trailing sample not counted).

Under torchrun (`ranks` sharded) the model trains in DistributedDataParallel: every rank
draws the same global epoch order, takes its contiguous share of each global batch of
`batch_size` (see `training.distributed`), and scales its loss by local_n * world / global_n,
so DDP's gradient average is the gradient of the global batch's mean loss. The ranks train on
exactly the global batches one process trains on: a short last batch (fewer than 2 samples per
rank) goes to the ranks that get 2 samples each, and the others take part in the all-reduce
with a stand-in weighted 0. That is exact for
losses that average per-sample terms (ce, focal, the class-balanced ones, balanced softmax);
losses normalised by the batch's sum of class weights (grw, and ldam once its deferred
re-weighting starts) become the sample-weighted mean of the ranks' own normalised losses,
a close but not identical estimate. Without `sync_bn` each rank's BatchNorm normalises with
its share's statistics, and rank 0's running statistics are kept (broadcast after each epoch).
Mixup draws the same lam and the global batch's permutation on every rank (the generator
advances as in one process), but pairs are formed within a rank's share, so mixed inputs
differ from a single process's. Dropout masks come from each rank's own torch generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flexsample.datasets.base import Split
from flexsample.engine.context import autocast_for
from flexsample.engine.distributed import Ranks
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import EpochResult

from .data import SplitLoader, predict_probs, regroup
from .distributed import (
    EpochShare,
    RankBatch,
    all_sum,
    broadcast_buffers,
    epoch_share,
    local_permutation,
    wrap_ddp,
)
from .evaluate import adjust_probs
from .losses import Loss, build_loss
from .metrics import per_class_recall
from .samplers import SAMPLERS

RESTARTS = ("fresh", "warm", "none")
OPTIMIZERS = ("adamw", "sgd")
COSINES = ("epochs", "steps")
ORDER_SALT = 0xDA7A  # of the epoch order's generator: (seed, epoch, salt[, repetition])


@dataclass
class TrainConfig:
    """What the trainer needs of a run's configuration (`workflows.run.build_loop` fills it)."""

    epochs_per_round: int
    epoch_budget: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    sampler: str = "instance"
    mixup: float = 0.0
    logit_adjust: float = 0.0
    seed: int = 0
    num_workers: int | None = 0
    # samples per epoch (None: one pass of the sampler over the subset)
    samples_per_epoch: int | None = None
    restart: str = "fresh"  # fresh | warm | none, see the module docstring
    lr_subset_scale: float = 0.0  # Q: peak lr x (subset / full train set)^Q; 0 = off
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    cosine: str = "epochs"  # epochs | steps (restart none only), see the module docstring

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FlexsampleError(
                f"unknown optimizer '{self.optimizer}'; accepted: {', '.join(OPTIMIZERS)}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise FlexsampleError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.cosine not in COSINES:
            raise FlexsampleError(f"unknown cosine '{self.cosine}'; accepted: {', '.join(COSINES)}")
        if self.cosine == "steps" and self.restart != "none":
            raise FlexsampleError(
                f"cosine 'steps' (one cosine over the budget's steps) needs restart 'none', "
                f"got restart '{self.restart}'"
            )
        if self.restart not in RESTARTS:
            raise FlexsampleError(
                f"unknown restart '{self.restart}'; accepted: {', '.join(RESTARTS)}"
            )
        if not self.lr_subset_scale >= 0:
            raise FlexsampleError(f"lr_subset_scale must be >= 0, got {self.lr_subset_scale}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise FlexsampleError(
                f"samples_per_epoch must be >= 1 or None, got {self.samples_per_epoch}"
            )


def epoch_order(
    indices: np.ndarray,
    labels: np.ndarray,
    sampler: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
    samples: int | None,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """One epoch's global order (dataset indices) over the subset `indices` (labels `labels`).

    The first pass is `sampler` with `rng` (the generator of (seed, epoch), also used for the
    epoch's mixup draws after it). With `samples` the order is that many long: repetition k >= 1
    is the sampler again with a generator of (seed, epoch, k), the passes concatenated and cut.
    Pure: the same on every rank, whatever the batch size or world size."""
    indices = np.asarray(indices, dtype=np.int64)
    order = indices[sampler(labels, rng)]
    if samples is None or len(order) == 0:
        return order
    parts, have, rep = [order], len(order), 1
    while have < samples:
        part = indices[sampler(labels, np.random.default_rng([seed, epoch, ORDER_SALT, rep]))]
        parts.append(part)
        have += len(part)
        rep += 1
    return np.concatenate(parts)[: int(samples)]


def subset_lr_scale(subset_size: int, full_size: int, power: float) -> float:
    """(subset_size / full_size)^power, exactly 1.0 with power 0 (the rate left untouched)."""
    if power == 0 or full_size <= 0:
        return 1.0
    return float((min(subset_size, full_size) / full_size) ** power)


class Trainer:
    """Implements the engine's Learner protocol for a contract model and dataset splits.

    `ranks` (sharded under torchrun): DDP training over the global batch `config.batch_size`,
    sharded validation; `sync_bn` converts BatchNorm to SyncBatchNorm. `self.model` stays the
    plain contract model (scoring and checkpoints use it). `progress(n)` is called per step
    with the samples of the global batch, so rank 0's bar shows the epoch's global progress.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Split,
        val: Split,
        num_classes: int,
        config: TrainConfig,
        device: torch.device,
        progress: Any = None,
        ranks: Ranks | None = None,
        sync_bn: bool = False,
    ) -> None:
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ranks = ranks if ranks is not None and ranks.sharded else None
        if self.ranks is not None and config.batch_size < 2 * self.ranks.world:
            raise FlexsampleError(
                f"--batch-size {config.batch_size} is the global batch: with "
                f"{self.ranks.world} processes it must be at least {2 * self.ranks.world} "
                "(2 per process)"
            )
        # what forward/backward go through: the DDP wrapper when sharded, else the model
        self.forward_module = wrap_ddp(self.model, self.ranks, sync_bn)
        self.train_split = train
        self.val_split = val
        self.num_classes = num_classes
        self.cfg = config
        self.device = device
        self.progress = progress  # callable(n) per trained batch, or None
        self.sampler = SAMPLERS.get(config.sampler)
        self.train_batches = SplitLoader(train, True, device, config.num_workers)
        self.val_batches = SplitLoader(val, False, device, config.num_workers)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        # epochs of the span start_round asked for, built at the next epoch (None: no new one)
        self._pending_epochs: int | None = None
        self.loss: Loss | None = None
        self._loss_counts: np.ndarray | None = None
        self.last_counts = np.zeros(num_classes, dtype=np.int64)

    def start_round(self, round_index: int, num_epochs: int) -> None:
        """A round (or a query) begins: `num_epochs` left in the round. The optimizer and
        cosine of `restart` are built at the next epoch (which knows the subset); with
        `restart` none only the first call counts."""
        if self.cfg.restart == "none" and self.optimizer is not None:
            return
        self._pending_epochs = max(1, int(num_epochs))

    def _new_optimizer(self, lr: float) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(
                self.model.parameters(),
                lr=lr,
                momentum=self.cfg.momentum,
                weight_decay=self.cfg.weight_decay,
                nesterov=False,
            )
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=self.cfg.weight_decay)

    def full_epoch_steps(self) -> int:
        """Optimizer steps of one epoch over the full training set (or `samples_per_epoch`):
        what `cosine` steps counts per epoch of the budget."""
        n = self.cfg.samples_per_epoch or len(self.train_split.labels)
        return max(1, -(-int(n) // int(self.cfg.batch_size)))

    def _begin_span(self, subset_size: int) -> None:
        """Build the optimizer / scheduler that `start_round` asked for (see `restart`)."""
        epochs = self._pending_epochs or self.cfg.epochs_per_round
        self._pending_epochs = None
        if self.cfg.restart == "none":  # one optimizer, one cosine over the budget
            peak, epochs = self.cfg.lr, max(1, self.cfg.epoch_budget)
            if self.cfg.cosine == "steps":
                epochs *= self.full_epoch_steps()
        else:
            peak = self.cfg.lr * subset_lr_scale(
                subset_size, len(self.train_split.labels), self.cfg.lr_subset_scale
            )
        if self.cfg.restart == "warm" and self.optimizer is not None:
            for group in self.optimizer.param_groups:  # moments kept, the cosine restarts
                group["lr"] = peak
                group["initial_lr"] = peak
        else:
            self.optimizer = self._new_optimizer(peak)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)

    def _loss_for(self, counts: np.ndarray) -> Loss:
        if self.loss is None or not np.array_equal(counts, self._loss_counts):
            self.loss = build_loss(self.cfg.loss, counts, **self.cfg.loss_params).to(self.device)
            self._loss_counts = counts
        return self.loss

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        if self.optimizer is None and self._pending_epochs is None:
            self.start_round(0, self.cfg.epochs_per_round)
        t0 = time.perf_counter()
        indices = np.asarray(indices, dtype=np.int64)
        cosine, scale = self._epoch_rates(len(indices))
        groups = self.optimizer.param_groups
        lr = float(groups[0]["lr"])
        labels = self.train_split.labels[indices]
        counts = np.bincount(labels, minlength=self.num_classes)
        self.last_counts = counts
        loss_fn = self._loss_for(counts)
        loss_fn.set_progress(epoch, self.cfg.epoch_budget)
        # the global order: a pure function of (seed, epoch), the same on every rank
        rng = np.random.default_rng([self.cfg.seed, epoch, ORDER_SALT])
        order = epoch_order(
            indices, labels, self.sampler, rng, self.cfg.samples_per_epoch, self.cfg.seed, epoch
        )
        rank, world = (self.ranks.rank, self.ranks.world) if self.ranks else (0, 1)
        # this rank's share of each global batch: the batches one process trains on (a lone
        # trailing sample skipped: it breaks batch norm and adds nothing); a short last batch
        # goes to the ranks that get 2 samples each, the others weigh a stand-in 0
        key = (self.cfg.seed, epoch)
        share = epoch_share(
            order, self.cfg.batch_size, rank, world, key if self.ranks is not None else None
        )
        self.model.train()
        total, seen, cosine = self._train_share(share, key, loss_fn, rng, cosine, scale)
        for g, rate in zip(groups, cosine, strict=True):
            g["lr"] = rate  # the cosine steps on from its own value, not the scaled one
        if self.cfg.cosine != "steps":
            self.scheduler.step()
        if self.ranks is not None:
            broadcast_buffers(self.model, self.ranks)  # every rank ends as rank 0
            total, seen = (float(v) for v in all_sum([total, seen], self.ranks))
        return EpochResult(
            loss=total / max(seen, 1),
            seconds=time.perf_counter() - t0,
            extra={"lr": lr, "samples": int(seen)},
        )

    def _epoch_rates(self, subset_size: int) -> tuple[list[float], float]:
        """The optimizer of a new span if one is pending, then this epoch's rates: the
        cosine's (returned) and, with `restart` none and `lr_subset_scale`, the subset scale
        applied to the groups (returned too)."""
        if self._pending_epochs is not None:
            self._begin_span(subset_size)
        groups = self.optimizer.param_groups
        cosine = [g["lr"] for g in groups]  # this epoch's (cosine) rate
        scale = 1.0
        if self.cfg.restart == "none" and self.cfg.lr_subset_scale > 0:
            scale = subset_lr_scale(
                subset_size, len(self.train_split.labels), self.cfg.lr_subset_scale
            )
            for g, rate in zip(groups, cosine, strict=True):
                g["lr"] = rate * scale
        return cosine, scale

    def _train_share(
        self,
        share: EpochShare,
        key: tuple[int, int],
        loss_fn: Loss,
        rng: np.random.Generator,
        cosine: list[float],
        scale: float,
    ) -> tuple[float, int, list[float]]:
        """One optimizer step per batch of this rank's `share`: the summed loss and samples
        trained on (stand-ins not counted) and the cosine's rates after the epoch."""
        groups = self.optimizer.param_groups
        world = self.ranks.world if self.ranks is not None else 1
        total, seen = 0.0, 0
        loaded = regroup(
            self.train_batches(share.indices, share.step_size, key, share.seeds),
            [b.reads for b in share.batches],
        )
        for batch, (x, y) in zip(share.batches, loaded, strict=True):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self._step_loss(x, y, loss_fn, rng, batch)
            self.optimizer.zero_grad(set_to_none=True)
            if self.ranks is None:
                loss.backward()
            else:  # DDP averages over ranks: weight each rank by its share of the batch
                (loss * (batch.local * world / batch.size)).backward()
            self.optimizer.step()
            if self.cfg.cosine == "steps":  # the cosine steps on from its own value
                for g, rate in zip(groups, cosine, strict=True):
                    g["lr"] = rate
                self.scheduler.step()
                cosine = [g["lr"] for g in groups]
                if scale != 1.0:  # then the scale again
                    for g, rate in zip(groups, cosine, strict=True):
                        g["lr"] = rate * scale
            total += float(loss.detach()) * batch.local
            seen += batch.local
            if self.progress is not None:
                self.progress(len(y) if self.ranks is None else batch.size)
        return total, seen, cosine

    def _step_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Loss,
        rng: np.random.Generator,
        batch: RankBatch,
    ) -> torch.Tensor:
        if self.cfg.mixup > 0:
            # the same lam and the same generator draws on every rank (the global batch's
            # permutation); under DDP a rank pairs samples within its own share only
            lam = float(rng.beta(self.cfg.mixup, self.cfg.mixup))
            perm_np = rng.permutation(batch.size)
            if self.ranks is not None and batch.local == 0:  # a stand-in (weight 0)
                perm_np = np.arange(len(y))
            elif self.ranks is not None:
                perm_np = local_permutation(perm_np, batch.lo - batch.start, batch.hi - batch.start)
            perm = torch.as_tensor(perm_np, device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            with autocast_for(self.device):
                logits = self.forward_module(x)
            return lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
        with autocast_for(self.device):
            logits = self.forward_module(x)
        return loss_fn(logits, y)

    def validate(self) -> tuple[float, list[float]]:
        probs = predict_probs(self.model, self.val_batches, ranks=self.ranks)
        # model selection sees the same (adjusted) predictions the test report will
        probs = adjust_probs(probs, self.last_counts, self.cfg.logit_adjust)
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(
            self.val_split.labels, probs.argmax(1), labels=np.arange(self.num_classes)
        )
        recall = per_class_recall(cm)
        present = ~np.isnan(recall)
        return float(recall[present].mean()), np.nan_to_num(recall, nan=0.0).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "pending_epochs": self._pending_epochs,
            "last_counts": self.last_counts,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.last_counts = np.asarray(state["last_counts"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws continue as uninterrupted
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.optimizer = self.scheduler = None
        if state["optimizer"] is not None:
            # any optimizer and scheduler: the loaded states (moments, rates, cosine position
            # and length) replace what they were built with
            self.optimizer = self._new_optimizer(self.cfg.lr)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=1)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self._pending_epochs = state.get("pending_epochs")
