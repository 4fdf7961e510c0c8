"""The training consumer of the engine: a `Learner` over a dataset's train/val splits.

Fresh optimizer and cosine learning rate per round; seeded data order per epoch; bf16
autocast and channels_last on CUDA. Losses and samplers come from their registries and are
rebuilt from the class counts of the subset being trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flexsample.datasets.base import Split
from flexsample.engine.context import autocast_for
from flexsample.engine.interfaces import EpochResult

from .data import SplitLoader, predict_probs
from .evaluate import adjust_probs
from .losses import Loss, build_loss
from .metrics import per_class_recall
from .samplers import SAMPLERS


@dataclass
class TrainConfig:
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


class Trainer:
    """Implements the engine's Learner protocol for a contract model and dataset splits."""

    def __init__(
        self,
        model: nn.Module,
        train: Split,
        val: Split,
        num_classes: int,
        config: TrainConfig,
        device: torch.device,
        progress: Any = None,
    ) -> None:
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
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
        self.loss: Loss | None = None
        self._loss_counts: np.ndarray | None = None
        self.last_counts = np.zeros(num_classes, dtype=np.int64)

    def start_round(self, round_index: int, num_epochs: int) -> None:
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, num_epochs)
        )

    def _loss_for(self, counts: np.ndarray) -> Loss:
        if self.loss is None or not np.array_equal(counts, self._loss_counts):
            self.loss = build_loss(self.cfg.loss, counts, **self.cfg.loss_params).to(self.device)
            self._loss_counts = counts
        return self.loss

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        if self.optimizer is None:
            self.start_round(0, self.cfg.epochs_per_round)
        t0 = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])  # this epoch's (cosine) rate
        indices = np.asarray(indices, dtype=np.int64)
        labels = self.train_split.labels[indices]
        counts = np.bincount(labels, minlength=self.num_classes)
        self.last_counts = counts
        loss_fn = self._loss_for(counts)
        loss_fn.set_progress(epoch, self.cfg.epoch_budget)
        rng = np.random.default_rng([self.cfg.seed, epoch, 0xDA7A])
        order = indices[self.sampler(labels, rng)]
        self.model.train()
        total, seen = 0.0, 0
        for x, y in self.train_batches(order, self.cfg.batch_size, (self.cfg.seed, epoch)):
            if len(y) < 2 and seen > 0:
                continue  # a lone trailing sample breaks batch norm and adds nothing
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self._step_loss(x, y, loss_fn, rng)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            if self.progress is not None:
                self.progress(len(y))
        self.scheduler.step()
        return EpochResult(
            loss=total / max(seen, 1), seconds=time.perf_counter() - t0, extra={"lr": lr}
        )

    def _step_loss(
        self, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, rng: np.random.Generator
    ) -> torch.Tensor:
        if self.cfg.mixup > 0:
            lam = float(rng.beta(self.cfg.mixup, self.cfg.mixup))
            perm = torch.as_tensor(rng.permutation(len(y)), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            with autocast_for(self.device):
                logits = self.model(x)
            return lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
        with autocast_for(self.device):
            logits = self.model(x)
        return loss_fn(logits, y)

    def validate(self) -> tuple[float, list[float]]:
        probs = predict_probs(self.model, self.val_batches)
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
        if state["optimizer"] is not None:
            self.start_round(0, self.cfg.epochs_per_round)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
