"""The contracts between the engine and what plugs into it (DESIGN.md, "Contracts").

Every piece is a small class: estimators score candidates, schedules decide when and how
much the subset grows, allocations split a budget across classes, anchor strategies pick
the starting subset. Each keeps its tunable state in `state_dict()` so checkpoints resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: the registries and policies import without torch
    import torch
    from torch import nn

    from .context import ScoringContext

NEEDS = frozenset({"features", "probs", "mc", "labels"})


@runtime_checkable
class ModelLike(Protocol):
    """A classifier split into a deterministic embedding and a final linear head."""

    head: nn.Linear
    dropout_p: float

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


if TYPE_CHECKING:

    class ContractModule(nn.Module, ModelLike):
        """For annotations only (there is no such class at run time): an nn.Module that fits
        ModelLike, the model as the engine holds it once `ScoringContext` checked the contract
        (nn.Module's `__getattr__` would otherwise type `model.head` as `Tensor | Module`)."""


class Stateful:
    """Default (empty) state for components that keep none."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Estimator(Stateful):
    """Scores candidates; higher = take first.

    Subclasses set `name`, declare `needs` (a subset of features, probs, mc, labels) and
    implement `score`. The context computes only what is declared and refuses the rest.

    A batch-aware estimator (BatchBALD, core-set, BADGE, TypiClust) also implements
    `select(ctx, candidates, k) -> array of k distinct candidates`: the engine then calls it
    once per class with that class's candidates (ascending global indices) and its quota
    0 < k < len(candidates), instead of taking the k best scores. `score` stays required: a
    combination ('a+b') ranks by scores.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class ValRecord:
    """One validation measurement (after an epoch)."""

    epoch: int
    balanced_accuracy: float
    per_class_recall: tuple[float, ...]


@dataclass(frozen=True)
class PolicyState:
    """What schedules and allocations may read. Counts are per class, length C.

    `epoch` is the number of epochs already trained; `round` is `epoch // epochs_per_round`.
    """

    epoch: int
    step: int
    rounds: int
    epochs_per_round: int
    subset_counts: np.ndarray
    remaining_counts: np.ndarray
    anchor_size: int
    val_history: tuple[ValRecord, ...] = field(default_factory=tuple)

    @property
    def epoch_budget(self) -> int:
        return self.rounds * self.epochs_per_round

    @property
    def round(self) -> int:
        return self.epoch // self.epochs_per_round

    @property
    def at_round_start(self) -> bool:
        return self.epoch % self.epochs_per_round == 0

    @property
    def subset_size(self) -> int:
        return int(self.subset_counts.sum())

    @property
    def total_size(self) -> int:
        return int(self.subset_counts.sum() + self.remaining_counts.sum())

    @property
    def num_classes(self) -> int:
        return len(self.subset_counts)

    @property
    def last_recall(self) -> np.ndarray | None:
        if not self.val_history:
            return None
        return np.asarray(self.val_history[-1].per_class_recall, dtype=np.float64)


class Policy(Stateful):
    """When to query (`should_query`, asked before every epoch) and how many in total
    (`--policy`; called `Schedule` before, a name kept as a deprecated alias).

    `should_query` answers a bool and `budget` a finite integer >= 0; the engine checks both
    (engine.validation) and names the policy in any error.
    """

    name: ClassVar[str] = ""

    def should_query(self, state: PolicyState) -> bool:
        raise NotImplementedError

    def budget(self, state: PolicyState) -> int:
        raise NotImplementedError

    def validate(self, rounds: int, epochs_per_round: int) -> None:
        """Raise FlexsampleError when the schedule cannot run with this budget."""


class Allocation(Stateful):
    """Splits a step's budget across classes: `quotas(...)[c] <= remaining_counts[c]`.

    Quotas are C integers >= 0 summing to at most the budget (checked by the engine).
    """

    name: ClassVar[str] = ""

    def quotas(self, state: PolicyState, budget: int) -> np.ndarray:
        raise NotImplementedError


class Anchors(Stateful):
    """Chooses the starting subset. `needs_features` asks the caller for a feature matrix.

    `select` returns a non-empty 1-D integer array of distinct indices in [0, len(labels))
    (checked by `engine.validation.select_anchors`).
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False

    def select(
        self,
        labels: np.ndarray,
        num_classes: int,
        seed: int,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        raise NotImplementedError


@dataclass
class EpochResult:
    """What a learner reports after training one epoch."""

    loss: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


class Learner(Protocol):
    """The training consumer as the curriculum loop sees it (training/ or the user's own)."""

    model: nn.Module

    def start_round(self, round_index: int, num_epochs: int) -> None:
        """A fresh optimizer and learning-rate schedule spanning `num_epochs`."""

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult: ...

    def validate(self) -> tuple[float, Sequence[float]]:
        """(balanced accuracy, per-class recall) on the validation split."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def __getattr__(name: str) -> Any:
    """`Schedule`, the old name of `Policy`, with one deprecation warning."""
    if name == "Schedule":
        import warnings

        warnings.warn(
            "flexsample's Schedule is deprecated: it is now called Policy (the --policy component)",
            FutureWarning,
            stacklevel=2,
        )
        return Policy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
