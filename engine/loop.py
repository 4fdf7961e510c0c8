"""The curriculum loop: train -> validate -> policy -> allocation -> score -> select -> grow.

It drives any `Learner` (training/'s trainer or a user's own) and reports through callbacks;
it writes nothing but checkpoints, and only when given a directory.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar

import numpy as np

from .errors import FlexsampleError, ParameterError
from .faults import fault_point
from .interfaces import (
    Allocation,
    EpochResult,
    Estimator,
    Learner,
    Policy,
    PolicyState,
    ValRecord,
)
from .pool import Pool
from .selection import acquisition_keys, select_segments

if TYPE_CHECKING:  # torch is imported where it is used: callbacks and records import without it
    from .context import InputFn

T = TypeVar("T")

# how the weights the test reports are chosen (Curriculum(checkpoint_on=...))
CHECKPOINT_RULES = ("val", "smoothed", "last")
SMOOTH_EPOCHS = 3


@dataclass
class StepRecord:
    """One query step, closed when its training span ends (one line of rounds.jsonl)."""

    step: int
    epoch: int
    subset_size: int
    class_counts: list[int]
    val_balanced_accuracy: float | None = None
    val_per_class_recall: list[float] | None = None
    score_s: float = 0.0
    train_s: float = 0.0
    epochs: int = 0
    best_val_balanced_accuracy: float | None = None
    # images the step's scoring pushed through the backbone (ScoringContext.stats)
    score_samples: int = 0
    # samples the learner trained on in this step (EpochResult.extra["samples"], else one
    # pass over the subset per epoch)
    train_samples: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueryResult:
    step: int
    quotas: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    seconds: float
    score_samples: int = 0  # backbone passes the scoring computed (failed OOM tries too)


@dataclass
class LoopResult:
    best_val_balanced_accuracy: float
    best_epoch: int
    subset_size_at_best: int
    records: list[StepRecord] = field(default_factory=list)


class Callback:
    """Hooks for progress display and run outputs; every method is optional.

    A callback with a `state_key` attribute and `state_dict()` / `load_state_dict(state)` has
    its state saved in every checkpoint (under `state["callbacks"][state_key]`) and restored
    on resume, so files it writes can be made consistent with the checkpoint resumed from.
    """

    def on_scoring_start(self, step: int, total: int) -> None: ...
    def on_scoring_advance(self, n: int) -> None: ...
    def on_query(self, result: QueryResult) -> None: ...
    def on_epoch_start(self, epoch: int, subset_size: int) -> None: ...
    # the learner's report (EpochResult.extra: e.g. the learning rate), before on_epoch_end
    def on_epoch_result(self, epoch: int, result: EpochResult) -> None: ...
    def on_epoch_end(self, epoch: int, loss: float, val: ValRecord, improved: bool) -> None: ...
    def on_step_end(self, record: StepRecord) -> None: ...
    def on_checkpoint(self, epoch: int) -> None: ...


class StatefulCallback(Protocol):
    """A callback whose state goes into checkpoints (`Callback`'s docstring); restoring it
    needs `load_state_dict(state)` too, looked up when a checkpoint is loaded."""

    state_key: str

    def state_dict(self) -> dict[str, Any]: ...


def _is_stateful(cb: object) -> TypeGuard[StatefulCallback]:
    return getattr(cb, "state_key", None) is not None and callable(getattr(cb, "state_dict", None))


class Curriculum:
    """Grows the training subset from anchors to (typically) the full split.

    The epoch budget is `rounds * epochs_per_round`. Before every epoch the schedule is asked
    whether to query; a query before the first epoch joins step 0 (the anchors). Each round,
    and each query, starts a fresh optimizer in the learner.

    `meta` is stored in checkpoints as `state["meta"]`; after `load_state_dict` the saved one
    is `loaded_meta` (a run pipeline keeps a config hash there to refuse foreign checkpoints).
    A CUDA out-of-memory error while scoring retries the query's scoring once with half the
    score batch size (kept for later queries), then fails naming --score-batch-size.

    `mc_source="snapshots"` makes every MC score draw from a snapshot ensemble: the
    best-validation weights of the last `snapshots` completed rounds, kept in CPU memory and
    in checkpoints (`engine.snapshots` has the rule for the first query and the costs).

    `checkpoint_on` picks the weights kept as the best (best.pt, `best_state`): `val` (the
    epoch with the best validation balanced accuracy), `smoothed` (the best mean over the last
    3 epochs) or `last` (the last epoch).

    `ranks` (`engine.distributed.Ranks` over a process group, e.g. under torchrun): every rank
    runs the same loop; scoring is sharded over the ranks and gathered, and rank 0's selection
    is broadcast so the pools stay identical. Give `checkpoint_dir` and file-writing callbacks
    to rank 0 only. A sharded scoring pass that runs out of memory fails (no retry at a smaller
    batch: the ranks would no longer make the same collective calls).
    """

    def __init__(
        self,
        pool: Pool,
        schedule: Policy,
        allocation: Allocation,
        estimator: Estimator,
        learner: Learner,
        inputs: InputFn,
        *,
        rounds: int,
        epochs_per_round: int,
        seed: int,
        score_batch_size: int = 256,
        acquisition: str = "topk",
        acquisition_beta: float = 1.0,
        checkpoint_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        meta: dict[str, Any] | None = None,
        mc_source: str = "dropout",
        snapshots: int = 5,
        ranks: Any = None,
        checkpoint_on: str = "val",
    ) -> None:
        if rounds < 1:
            raise ParameterError(f"rounds must be >= 1, got {rounds}", "rounds")
        if epochs_per_round < 1:
            raise ParameterError(
                f"epochs_per_round must be >= 1, got {epochs_per_round}", "epochs_per_round"
            )
        from .validation import plugin_call  # a plugin's exception names the plugin

        plugin_call("policy", schedule, "validate", rounds, epochs_per_round)
        from .snapshots import SnapshotKeeper, check_mc_source

        check_mc_source(mc_source, snapshots)
        self.mc_source = mc_source
        self.snapshots = int(snapshots)
        # the rounds' best weights, kept only when they are the MC draws
        self.snapshot_keeper = SnapshotKeeper(snapshots) if mc_source == "snapshots" else None
        self.pool = pool
        self.schedule = schedule
        self.allocation = allocation
        self.estimator = estimator
        self.learner = learner
        self.inputs = inputs
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.seed = seed
        self.score_batch_size = score_batch_size
        from .scoring import check_acquisition

        check_acquisition(acquisition, estimator)
        if checkpoint_on not in CHECKPOINT_RULES:
            raise ParameterError(
                f"unknown checkpoint_on '{checkpoint_on}'; accepted: {', '.join(CHECKPOINT_RULES)}",
                "checkpoint_on",
            )
        self.checkpoint_on = checkpoint_on
        self.acquisition = acquisition
        self.acquisition_beta = float(acquisition_beta)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.callbacks = list(callbacks)
        self.meta = dict(meta or {})
        self.loaded_meta: dict[str, Any] | None = None
        self.epoch = 0
        self.step = 0
        self.anchor_size = 0
        self.history: list[ValRecord] = []
        self.records: list[StepRecord] = []
        self.current: StepRecord | None = None
        self.best_val = -1.0  # the validation balanced accuracy of the kept (best) weights
        self.best_score = -np.inf  # what `checkpoint_on` compares
        self.best_epoch = -1
        self.subset_size_at_best = 0
        self.best_state: dict[str, Any] | None = None  # kept in memory without checkpoint_dir
        self._score_items = 0  # backbone passes of the current query's scoring
        self.ranks = ranks  # an engine.distributed.Ranks: scoring sharded over its group

    @property
    def epoch_budget(self) -> int:
        return self.rounds * self.epochs_per_round

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    # -- state seen by policies ------------------------------------------------------------
    def policy_state(self) -> PolicyState:
        return PolicyState(
            epoch=self.epoch,
            step=self.step,
            rounds=self.rounds,
            epochs_per_round=self.epochs_per_round,
            subset_counts=self.pool.subset_counts(),
            remaining_counts=self.pool.remaining_counts(),
            anchor_size=self.anchor_size,
            val_history=tuple(self.history),
        )

    def start(self, anchors: np.ndarray) -> None:
        """Put the anchor set in the pool as step 0."""
        from .validation import check_anchor_set  # an empty or bad start trains on nothing

        anchors = check_anchor_set(anchors, len(self.pool))
        if self.pool.size:
            raise FlexsampleError("the pool already holds samples; start() takes the anchors")
        self.pool.add(anchors, step=0)
        self.anchor_size = self.pool.size
        self.current = self._open_record(score_s=0.0)

    def _open_record(self, score_s: float, score_samples: int = 0) -> StepRecord:
        return StepRecord(
            step=self.step,
            epoch=self.epoch,
            subset_size=self.pool.size,
            class_counts=self.pool.subset_counts().tolist(),
            score_s=score_s,
            score_samples=score_samples,
        )

    # -- one query ---------------------------------------------------------------------------
    def query(self, budget: int, state: PolicyState) -> QueryResult:
        remaining = self.pool.remaining_counts()
        budget = int(min(budget, remaining.sum()))
        from .scoring import is_selector, score_candidates  # torch, imported when scoring
        from .validation import ask_quotas  # checked; errors name the plugin and its origin

        quotas = ask_quotas(self.allocation, state, budget, remaining)
        step = self.step + 1 if self.epoch > 0 else 0
        t0 = time.perf_counter()
        takes_all = quotas == remaining
        partial = np.flatnonzero((quotas > 0) & ~takes_all)
        chosen = [
            self.pool.remaining_indices(int(c)) for c in np.flatnonzero(takes_all & (quotas > 0))
        ]
        # candidates grouped by class, ascending within each: the pool's own layout
        groups = [self.pool.remaining_indices(int(c)) for c in partial]
        candidates = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        scores = np.zeros(0)
        self._score_items = 0
        if len(candidates):
            sizes = np.zeros(len(quotas), np.int64)
            sizes[partial] = [len(g) for g in groups]
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            if is_selector(self.estimator):
                picks, scores = self._run_scoring(
                    step, candidates, lambda ctx: self._select(ctx, groups, quotas[partial])
                )
                chosen.append(picks)
            else:
                scores = self._run_scoring(
                    step,
                    candidates,
                    lambda ctx: score_candidates(self.estimator, ctx, candidates),
                )
                keys = acquisition_keys(
                    scores,
                    candidates,
                    bounds,
                    self.acquisition,
                    self.acquisition_beta,
                    seed=self.seed,
                    step=step,
                    num_items=len(self.pool.labels),
                )
                chosen.append(
                    select_segments(candidates, keys, bounds, np.where(takes_all, 0, quotas))
                )
        chosen_idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        if self.ranks is not None and self.ranks.sharded:  # one pool, bit for bit, everywhere
            chosen_idx = self.ranks.broadcast(chosen_idx)
        self.pool.add(chosen_idx, step)
        self.step = step
        result = QueryResult(
            step,
            quotas,
            candidates,
            scores,
            chosen_idx,
            time.perf_counter() - t0,
            self._score_items,
        )
        self._emit("on_query", result)
        fault_point("query")
        return result

    def _select(
        self, ctx: Any, groups: list[np.ndarray], quotas: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A selector's picks class by class, and scores recording the pick order: the
        first of k picks in a class scores 1, the last 1/k, the rest 0."""
        from .scoring import select_candidates

        picks, scores = [], []
        for group, k in zip(groups, quotas, strict=True):
            got = select_candidates(self.estimator, ctx, group, int(k))
            order = np.zeros(len(group))
            order[np.searchsorted(group, got)] = (int(k) - np.arange(int(k))) / int(k)
            picks.append(got)
            scores.append(order)
        return np.concatenate(picks), np.concatenate(scores)

    def _run_scoring(self, step: int, candidates: np.ndarray, work: Callable[[Any], T]) -> T:
        """`work(ctx)` on a fresh scoring context; on out-of-memory, once more at half the
        batch size."""
        from .context import ScoringContext

        tried = []
        while True:
            self._emit("on_scoring_start", step, len(candidates))
            ctx = ScoringContext(
                self.learner.model,
                self.inputs,
                self.pool.labels,
                seed=self.seed,
                step=step,
                batch_size=self.score_batch_size,
                subset_indices=self.pool.subset_indices(),
                progress=lambda n: self._emit("on_scoring_advance", n),
                snapshots=self.snapshot_members(),
                ranks=self.ranks,
            )
            try:
                out = work(ctx)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                self._score_items += int(ctx.stats["backbone_items"])
                if not _is_out_of_memory(exc) or ctx.ranks.sharded:
                    raise
                tried.append(self.score_batch_size)
            else:  # every rank's passes (a collective: all ranks get here together)
                local = np.array([ctx.stats["backbone_items"]], dtype=np.int64)
                self._score_items += int(ctx.ranks.gather_rows(local).sum())
                return out
            del ctx
            _free_device_memory()
            if len(tried) > 1 or self.score_batch_size < 2:
                sizes = ", then ".join(str(b) for b in tried)
                hint = (
                    f"pass a smaller --score-batch-size (e.g. {tried[-1] // 2})"
                    if tried[-1] > 1
                    else "use fewer --mc-samples, a smaller --image-size or another --device"
                )
                raise FlexsampleError(
                    f"out of memory while scoring {len(candidates)} candidates at query step "
                    f"{step} with --score-batch-size {sizes}; {hint}"
                ) from None
            self.score_batch_size //= 2

    def snapshot_members(self) -> list[Any] | None:
        """The weights of the snapshot ensemble a query now scores with (oldest first, at
        least 2), or None when MC draws come from dropout."""
        if self.snapshot_keeper is None:
            return None
        return self.snapshot_keeper.members(self.learner.model)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        while self.epoch < self.epoch_budget:
            subset = self.begin_epoch()
            res = self.learner.train_epoch(subset, self.epoch)
            fault_point("train-epoch")
            self.end_epoch(res, *self.learner.validate())
        return self.finish()

    # The three steps of `run`, public for drivers that own the training loop (Lightning's
    # FlexSampling callback): begin_epoch, train and validate the subset, end_epoch; finish.
    def begin_epoch(self) -> np.ndarray:
        """Before epoch `self.epoch`: query if the schedule says so, start a learner round when
        one begins; returns the subset to train on."""
        if self.current is None:
            raise FlexsampleError("call start(anchors) (or load a checkpoint) before run()")
        from .validation import ask_budget, ask_should_query  # checked, naming the plugin

        state = self.policy_state()
        queried = False
        if not self.pool.is_full and ask_should_query(self.schedule, state):
            budget = ask_budget(self.schedule, state)
            if budget > 0:
                if self.current.epochs > 0:
                    self._close_record(self.current)
                result = self.query(budget, state)
                queried = True
                if self.current is None or self.current.epochs > 0 or self.epoch > 0:
                    self.current = self._open_record(result.seconds, result.score_samples)
                else:  # the query before the first epoch joins step 0
                    self.current = self._open_record(
                        self.current.score_s + result.seconds,
                        self.current.score_samples + result.score_samples,
                    )
        if state.at_round_start or queried:
            left = self.epochs_per_round - self.epoch % self.epochs_per_round
            self.learner.start_round(state.round, left)
        subset = self.pool.subset_indices()
        self._emit("on_epoch_start", self.epoch, len(subset))
        return subset

    def finish(self) -> LoopResult:
        """Close the last step's record (once the epoch budget is spent) and sum up."""
        if self.current is not None and self.current.epochs > 0:
            self._close_record(self.current)
        return LoopResult(self.best_val, self.best_epoch, self.subset_size_at_best, self.records)

    def end_epoch(self, res: EpochResult, bal: float, recall: Sequence[float]) -> None:
        """After epoch `self.epoch` trained (`res`) and validated (balanced accuracy, per-class
        recall): record it, keep the best weights, count the epoch, checkpoint."""
        val = ValRecord(self.epoch, float(bal), tuple(float(r) for r in recall))
        self.history.append(val)
        rec = self.current
        if rec is None:
            raise FlexsampleError("call start(anchors) (or load a checkpoint) before end_epoch()")
        rec.epochs += 1
        rec.train_s += float(res.seconds)
        rec.train_samples += int(res.extra.get("samples", rec.subset_size))
        rec.val_balanced_accuracy = val.balanced_accuracy
        rec.val_per_class_recall = list(val.per_class_recall)
        rec.best_val_balanced_accuracy = max(
            rec.best_val_balanced_accuracy or -1.0, val.balanced_accuracy
        )
        score = self._checkpoint_score(val)
        improved = score > self.best_score
        if improved:
            self.best_score = score
            self.best_val = val.balanced_accuracy
            self.best_epoch = self.epoch
            self.subset_size_at_best = self.pool.size
            self._save_best(val)
        if self.snapshot_keeper is not None:
            round_done = (self.epoch + 1) % self.epochs_per_round == 0
            self.snapshot_keeper.end_epoch(
                self.epoch // self.epochs_per_round,
                val.balanced_accuracy,
                self.learner.model,
                round_done,
            )
        self._emit("on_epoch_result", self.epoch, res)
        self._emit("on_epoch_end", self.epoch, float(res.loss), val, improved)
        self.epoch += 1
        if self.checkpoint_dir is not None:
            from .checkpoint import save_atomic

            save_atomic(self.checkpoint_dir / "checkpoint.pt", self.state_dict(), rotate=True)
            self._emit("on_checkpoint", self.epoch)

    def _checkpoint_score(self, val: ValRecord) -> float:
        """What picks the weights the test reports (`checkpoint_on`): `val`, the epoch's
        validation balanced accuracy; `smoothed`, its mean over the last SMOOTH_EPOCHS epochs
        (a few validation images per class make single epochs noisy); `last`, the epoch
        itself (the last weights win)."""
        if self.checkpoint_on == "last":
            return float(val.epoch)
        if self.checkpoint_on == "smoothed":
            recent = self.history[-SMOOTH_EPOCHS:]
            return float(np.mean([v.balanced_accuracy for v in recent]))
        return val.balanced_accuracy

    def _close_record(self, rec: StepRecord) -> None:
        self.records.append(rec)
        self._emit("on_step_end", rec)

    def _save_best(self, val: ValRecord) -> None:
        weights = {k: v.detach().cpu().clone() for k, v in self.learner.model.state_dict().items()}
        payload = {
            "model": weights,
            "epoch": val.epoch,
            "val_balanced_accuracy": val.balanced_accuracy,
            "subset_size": self.subset_size_at_best,
            "subset_counts": self.pool.subset_counts(),
        }
        if self.checkpoint_dir is None:
            self.best_state = payload
        else:
            from .checkpoint import save_atomic

            save_atomic(self.checkpoint_dir / "best.pt", payload)

    # -- checkpoints ---------------------------------------------------------------------------
    def _components(self) -> list[tuple[str, str, Any]]:
        """(checkpoint key, plugin kind, object) of the pluggable components with state."""
        return [
            ("schedule", "policy", self.schedule),
            ("allocation", "allocation", self.allocation),
            ("estimator", "estimator", self.estimator),
        ]

    def _component_states(self) -> dict[str, Any]:
        from .validation import plugin_call  # a plugin's exception names the plugin

        return {
            key: plugin_call(kind, component, "state_dict")
            for key, kind, component in self._components()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "anchor_size": self.anchor_size,
            "rounds": self.rounds,
            "epochs_per_round": self.epochs_per_round,
            "seed": self.seed,
            "pool": self.pool.state_dict(),
            **self._component_states(),
            "learner": self.learner.state_dict(),
            "history": [asdict(v) for v in self.history],
            "records": [r.to_json() for r in self.records],
            "current": None if self.current is None else copy.deepcopy(self.current.to_json()),
            "best": (self.best_val, self.best_epoch, self.subset_size_at_best),
            "best_score": self.best_score,
            "callbacks": {key: cb.state_dict() for key, cb in self._stateful_callbacks().items()},
            "meta": copy.deepcopy(self.meta),
            "mc_source": self.mc_source,
            **(
                {"snapshots": self.snapshot_keeper.state_dict()}
                if self.snapshot_keeper is not None
                else {}
            ),
        }

    def _stateful_callbacks(self) -> dict[str, StatefulCallback]:
        found: dict[str, StatefulCallback] = {}
        for cb in self.callbacks:
            if not _is_stateful(cb):
                continue
            key = cb.state_key
            if key in found:
                raise FlexsampleError(
                    f"two loop callbacks use state_key '{key}' ({type(found[key]).__name__}, "
                    f"{type(cb).__name__}); give each a distinct state_key"
                )
            found[str(key)] = cb
        return found

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("rounds", "epochs_per_round", "seed"):
            if state[key] != getattr(self, key):
                raise FlexsampleError(
                    f"checkpoint was made with {key}={state[key]}, "
                    f"this run has {getattr(self, key)}"
                )
        saved_source = state.get("mc_source", "dropout")  # older checkpoints: dropout
        if saved_source != self.mc_source:
            raise FlexsampleError(
                f"checkpoint was made with mc_source={saved_source}, this run has {self.mc_source}"
            )
        if self.snapshot_keeper is not None:
            self.snapshot_keeper.load_state_dict(state["snapshots"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.anchor_size = int(state["anchor_size"])
        self.pool.load_state_dict(state["pool"])
        from .validation import plugin_call

        for key, kind, component in self._components():
            plugin_call(kind, component, "load_state_dict", state[key])
        self.learner.load_state_dict(state["learner"])
        self.history = [
            ValRecord(h["epoch"], h["balanced_accuracy"], tuple(h["per_class_recall"]))
            for h in state["history"]
        ]
        self.records = [StepRecord(**r) for r in state["records"]]
        self.current = None if state["current"] is None else StepRecord(**state["current"])
        self.best_val, self.best_epoch, self.subset_size_at_best = state["best"]
        # checkpoints from before `checkpoint_on` compared the validation accuracy itself
        self.best_score = float(state.get("best_score", self.best_val))
        saved = state.get("callbacks") or {}
        for key, cb in self._stateful_callbacks().items():
            load = getattr(cb, "load_state_dict", None)  # optional: StatefulCallback
            if key in saved and callable(load):
                load(saved[key])
        self.loaded_meta = state.get("meta")


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or a CUDA library's allocation failure raised as RuntimeError."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text


def _free_device_memory() -> None:
    """Return cached CUDA blocks after an out-of-memory error, before retrying smaller."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
