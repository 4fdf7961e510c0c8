"""PyTorch Lightning: flexsample's curriculum as a `Callback` around any `LightningModule`.

`FlexSampling` drives the engine's own `Curriculum` (pool, schedule, allocation, estimator,
scoring context, selection, checkpoints) while Lightning owns the training loop:

* **Growing the subset.** The train dataloader is rebuilt every epoch
  (`Trainer(reload_dataloaders_every_n_epochs=1)`) by `FlexSampling.train_dataloader()`:
  building it for a new epoch first runs `Curriculum.begin_epoch` (the schedule may query:
  the estimator scores candidates with the module's current weights and the pool grows), then
  returns a shuffled `DataLoader` over the subset. `FlexSampling.datamodule(val)` wraps this in
  a `LightningDataModule`; a user's own datamodule may call `train_dataloader()` instead.
* **Per-class recall.** The callback computes it itself from what `validation_step` returns
  (logits or predictions; labels from the batch), summing hits and counts per class over the
  epoch's validation (and across processes), so nothing has to be logged in a special way.
  After the epoch, `Curriculum.end_epoch` records it for the difficulty allocation.
* **Checkpoints.** The curriculum's state (pool, step, epoch, records, validation history,
  component states) is the callback's `state_dict`, stored as tensors and plain values, so
  Lightning checkpoints load with `weights_only=True` and `trainer.fit(..., ckpt_path=...)`
  resumes the curriculum where it stopped.

The model contract (`embed`, `head`, `dropout_p`) is checked when fitting starts: the module
itself, its `.model`, or the attribute named by `model=` must meet it (wrap other networks
with `flexsample.training.models.adapt_model`). Unlike `flexsample run`, the module's own
optimizer runs through the whole fit (it is not restarted at each round).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from flexsample._optional import require
from flexsample.engine.checkpoint import decode_state, encode_state
from flexsample.engine.context import InputFn
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Allocation, Anchors, EpochResult, Estimator, Policy
from flexsample.engine.loop import Callback as LoopCallback
from flexsample.engine.loop import Curriculum, LoopResult, StepRecord
from flexsample.engine.pool import Pool
from flexsample.engine.registry import get_allocation, get_anchors, get_policy
from flexsample.engine.validation import check_anchor_set, select_anchors

pl = require("lightning.pytorch", "lightning", "the Lightning callback")

__all__ = ["FlexSampling", "SubsetDataModule"]

# (validation_step output, batch) -> (predicted classes (B,), true classes (B,))
ValOutputsFn = Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]
# DataLoader keywords the callback sets itself
_OWN_LOADER_KEYS = ("batch_size", "shuffle", "sampler", "batch_sampler", "generator", "drop_last")


class _ModuleLearner:
    """The Learner the Curriculum sees: the module's contract model; Lightning trains it.

    Its state is empty: the weights and optimizers are in Lightning's own checkpoint.
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None

    def start_round(self, round_index: int, num_epochs: int) -> None:
        """Nothing to do: the module's optimizer spans the whole fit."""

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        raise FlexsampleError("under Lightning the Trainer trains; call fit(), not run()")

    def validate(self) -> tuple[float, list[float]]:
        raise FlexsampleError("under Lightning the Trainer validates; call fit(), not run()")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def contract_problem(model: object) -> str | None:
    """What keeps `model` from the engine's model contract, or None when it meets it."""
    if not isinstance(model, nn.Module):
        return f"it is a {type(model).__name__}, not a torch nn.Module"
    missing = [a for a in ("embed", "head", "dropout_p") if not hasattr(model, a)]
    if missing:
        return f"{type(model).__name__} has no {', '.join(missing)}"
    if not callable(model.embed):
        return f"{type(model).__name__}.embed is not callable"
    if not isinstance(model.head, nn.Linear):
        return f"{type(model).__name__}.head is a {type(model.head).__name__}, not an nn.Linear"
    p = model.dropout_p
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        return f"{type(model).__name__}.dropout_p is {p!r}, not a rate in [0, 1)"
    return None


def dataset_inputs(dataset: Dataset, loader_options: Mapping[str, Any] | None = None) -> InputFn:
    """An engine InputFn over a map-style dataset: the first element of each item, in order."""
    options = dict(loader_options or {})

    def batches(indices: np.ndarray, batch_size: int):
        subset = Subset(dataset, np.asarray(indices, dtype=np.int64).tolist())
        for item in DataLoader(subset, batch_size=batch_size, shuffle=False, **options):
            if isinstance(item, list | tuple):
                yield item[0]
            elif isinstance(item, torch.Tensor):
                yield item
            else:
                raise FlexsampleError(
                    f"FlexSampling scores the inputs of dataset items; got {type(item).__name__} "
                    "batches, expected (x, y) tuples or tensors (pass inputs= for other datasets)"
                )

    return batches


def default_val_outputs(outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, true classes) of one validation batch.

    `validation_step` returns the logits (B, C) or predicted classes (B,), or a dict holding
    `logits` or `preds`; the labels are the dict's `labels`, else the batch's second element.
    """
    labels = None
    found = outputs
    if isinstance(outputs, Mapping):
        labels = outputs.get("labels")
        found = outputs.get("logits", outputs.get("preds"))
    if labels is None and isinstance(batch, list | tuple) and len(batch) >= 2:
        labels = batch[1]
    if not isinstance(found, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise FlexsampleError(
            "FlexSampling reads per-class recall from validation_step: return the logits (B, C) "
            "or predicted classes (B,), or a dict with 'logits' or 'preds' (and 'labels' unless "
            f"the batch is (x, y)); validation_step returned {type(outputs).__name__}"
        )
    preds = found.argmax(-1) if found.dim() == 2 else found
    return preds, labels


CURRICULUM_OPTIONS = ("acquisition", "acquisition_beta", "mc_source", "snapshots")


def _scope_options(
    options: Mapping[str, Any], policy: Any, allocation: Any, estimator: Any, anchors: Any
) -> dict[str, dict[str, Any]]:
    """`options` split by the named components that declare each key (as the run's shortcut
    flags are); a key no named component declares is one line saying so."""
    from flexsample.engine.combine import split_spec
    from flexsample.engine.registry import PLUGIN_REGISTRIES

    named = {"policy": policy, "allocation": allocation, "estimator": estimator, "anchors": anchors}
    takes: dict[str, set[str]] = {}
    for kind, name in named.items():
        if not isinstance(name, str):
            continue
        reg = PLUGIN_REGISTRIES[kind]
        parts = split_spec(name) if kind == "estimator" else [name]
        takes[kind] = set().union(*(reg.options(p).model_fields for p in parts))
        if kind == "estimator" and len(parts) > 1:
            takes[kind].add("combine")
    out: dict[str, dict[str, Any]] = {kind: {} for kind in named}
    for key, value in options.items():
        if key in CURRICULUM_OPTIONS:
            continue
        owners = [kind for kind, keys in takes.items() if key in keys]
        if not owners:
            chosen = ", ".join(f"{k} '{n}'" for k, n in named.items() if isinstance(n, str))
            raise FlexsampleError(
                f"FlexSampling option '{key}' is not an option of {chosen or 'any component'}"
                f" (nor one of {', '.join(CURRICULUM_OPTIONS)}); drop it"
            )
        for kind in owners:
            out[kind][key] = value
    return out


class FlexSampling(pl.Callback):
    """Grows the training subset of a Lightning fit with flexsample's curriculum.

    The epoch budget is `rounds * epochs_per_round` (`Trainer(max_epochs=...)` must not exceed
    it). `policy`, `allocation`, `estimator` and `anchors` are registered names (as in
    `flexsample run`, built with `options` such as `mc_samples` or `anchor_scaling`: each option
    goes to the named components that declare it, and one that none of them declares is
    refused; the options `acquisition`, `acquisition_beta`, `mc_source` and `snapshots` go to
    the curriculum itself) or instances; `anchors` may also be an array of training indices.
    Prototype anchors need `anchor_features` (N, D). `inputs` is what scoring reads: a dataset
    with the same indices as `train_dataset` (e.g. without augmentation) or an engine InputFn;
    default the training dataset itself. `labels` are the training labels, indexed like
    `train_dataset`.
    """

    def __init__(
        self,
        train_dataset: Dataset,
        labels: Sequence[int] | np.ndarray,
        num_classes: int | None = None,
        *,
        rounds: int,
        epochs_per_round: int,
        policy: str | Policy = "linear",
        allocation: str | Allocation = "difficulty",
        estimator: str | Estimator = "mcdropout",
        anchors: str | Anchors | np.ndarray | Sequence[int] = "random",
        anchor_features: np.ndarray | None = None,
        options: Mapping[str, Any] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        score_batch_size: int = 256,
        inputs: Dataset | InputFn | None = None,
        loader_options: Mapping[str, Any] | None = None,
        model: str | None = None,
        val_outputs: ValOutputsFn | None = None,
        callbacks: Sequence[LoopCallback] = (),
    ) -> None:
        super().__init__()
        from flexsample.estimators import build_estimator

        opts = dict(options or {})
        scoped = _scope_options(opts, policy, allocation, estimator, anchors)
        self.train_dataset = train_dataset
        self.labels = np.asarray(labels)
        if len(self.labels) != len(train_dataset):  # type: ignore[arg-type]
            raise FlexsampleError(
                f"FlexSampling got {len(self.labels)} labels for a training dataset of "
                f"{len(train_dataset)} items; pass one label per item"  # type: ignore[arg-type]
            )
        if batch_size < 1:
            raise FlexsampleError(f"FlexSampling batch_size must be >= 1, got {batch_size}")
        own = sorted(set(loader_options or {}) & set(_OWN_LOADER_KEYS))
        if own:
            raise FlexsampleError(
                f"FlexSampling sets {', '.join(own)} of the train dataloader itself; drop "
                "them from loader_options (batch_size is an argument of its own)"
            )
        self.pool = Pool(self.labels, num_classes)
        self.anchors = (
            get_anchors(anchors, **scoped["anchors"]) if isinstance(anchors, str) else anchors
        )
        self.anchor_features = anchor_features
        self.batch_size = int(batch_size)
        self.loader_options = dict(loader_options or {})
        self.model_attr = model
        self.val_outputs = val_outputs or default_val_outputs
        if inputs is None or isinstance(inputs, Dataset):
            inputs = dataset_inputs(inputs or train_dataset, self.loader_options)
        self._learner = _ModuleLearner()
        self.curriculum = Curriculum(
            self.pool,
            get_policy(policy, **scoped["policy"]) if isinstance(policy, str) else policy,
            get_allocation(allocation, **scoped["allocation"])
            if isinstance(allocation, str)
            else allocation,
            build_estimator(estimator, scoped["estimator"])
            if isinstance(estimator, str)
            else estimator,
            self._learner,
            inputs,
            rounds=rounds,
            epochs_per_round=epochs_per_round,
            seed=seed,
            score_batch_size=score_batch_size,
            acquisition=opts.get("acquisition", "topk"),
            acquisition_beta=opts.get("acquisition_beta", 1.0),
            mc_source=opts.get("mc_source", "dropout"),
            snapshots=opts.get("snapshots", 5),
            callbacks=callbacks,
            meta={"labels_hash": _labels_hash(self.labels, self.pool.num_classes)},
        )
        self._begun = -1  # the curriculum epoch the train dataloader was last built for
        self._val: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, hits, totals)
        self._hits = torch.zeros(0)
        self._totals = torch.zeros(0)
        self._loss_sum = 0.0
        self._loss_n = 0
        self._t0: float | None = None
        self.result: LoopResult | None = None

    # -- what users read ---------------------------------------------------------------------
    @property
    def epoch_budget(self) -> int:
        """rounds x epochs_per_round: what `Trainer(max_epochs=...)` should be."""
        return self.curriculum.epoch_budget

    @property
    def step(self) -> int:
        """The current query step (0 = the anchors)."""
        return self.curriculum.step

    @property
    def records(self) -> list[StepRecord]:
        """One record per closed query step, as in a run's rounds.jsonl."""
        return self.curriculum.records

    def subset_indices(self) -> np.ndarray:
        """Training indices in the current subset, ascending."""
        return self.pool.subset_indices()

    # -- the train dataloader --------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """A shuffled DataLoader over the subset of the coming epoch (growing it first if the
        schedule says so); call it from the datamodule's or module's `train_dataloader`."""
        if self._learner.model is None:
            raise FlexsampleError(
                "FlexSampling.train_dataloader() is called by a Trainer that is fitting with "
                "this callback: pass it in Trainer(callbacks=[...]) and call trainer.fit()"
            )
        self._ensure_started()
        cur = self.curriculum
        if self._begun != cur.epoch and cur.epoch < cur.epoch_budget:
            with _modes_kept(self._learner.model):  # scoring puts the model in eval mode
                cur.begin_epoch()
            self._begun = cur.epoch
        generator = torch.Generator().manual_seed(cur.seed * 1_000_003 + cur.epoch)
        return DataLoader(
            Subset(self.train_dataset, self.pool.subset_indices().tolist()),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            **self.loader_options,
        )

    def datamodule(self, val_dataloaders: Any, test_dataloaders: Any = None) -> SubsetDataModule:
        """A LightningDataModule: the growing train subset plus the given val (and test) data."""
        return SubsetDataModule(self, val_dataloaders, test_dataloaders)

    def _ensure_started(self) -> None:
        """Anchors into the pool as step 0, unless a checkpoint already restored the pool."""
        if self.curriculum.current is not None:
            return
        if isinstance(self.anchors, Anchors):
            if self.anchors.needs_features and self.anchor_features is None:
                raise FlexsampleError(
                    f"{type(self.anchors).__name__} need a feature matrix of the training split: "
                    "pass FlexSampling(anchor_features=...) with one row per training item, or "
                    "use anchors='random'"
                )
            chosen = select_anchors(
                self.anchors,
                self.labels,
                self.pool.num_classes,
                self.curriculum.seed,
                self.anchor_features,
            )
        else:
            chosen = check_anchor_set(np.asarray(self.anchors), len(self.pool))
        self.curriculum.start(chosen)

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._learner.model = self._contract_model(pl_module)
        budget = self.epoch_budget
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise FlexsampleError(
                "FlexSampling grows the subset between epochs and needs the train dataloader "
                "rebuilt every epoch: pass Trainer(reload_dataloaders_every_n_epochs=1), got "
                f"{trainer.reload_dataloaders_every_n_epochs}"
            )
        if trainer.max_epochs is None or trainer.max_epochs < 0 or trainer.max_epochs > budget:
            raise FlexsampleError(
                f"FlexSampling's epoch budget is rounds x epochs_per_round = {budget}: pass "
                f"Trainer(max_epochs={budget}) (or fewer), got max_epochs={trainer.max_epochs}"
            )
        if trainer.check_val_every_n_epoch != 1:
            raise FlexsampleError(
                "FlexSampling needs the validation per-class recall after every epoch: pass "
                "Trainer(check_val_every_n_epoch=1), got "
                f"{trainer.check_val_every_n_epoch}"
            )

    def _contract_model(self, pl_module: Any) -> nn.Module:
        """The module's classifier that meets the model contract (embed, head, dropout_p)."""
        if self.model_attr is not None:
            candidates = [(f".{self.model_attr}", getattr(pl_module, self.model_attr, None))]
        else:
            candidates = [("", pl_module), (".model", getattr(pl_module, "model", None))]
        problems = []
        for where, obj in candidates:
            problem = contract_problem(obj)
            if problem is None:
                return obj
            problems.append(f"{type(pl_module).__name__}{where}: {problem}")
        raise FlexsampleError(
            "FlexSampling needs a model meeting the engine's contract (embed(x) -> (B, D), "
            "head: nn.Linear, dropout_p) as the LightningModule itself, its .model or "
            f"model='attribute'; {'; '.join(problems)}; wrap your network with "
            "flexsample.training.models.adapt_model(embedding, head, dropout)"
        )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        cur = self.curriculum
        if self._begun != cur.epoch:
            raise FlexsampleError(
                f"the train dataloader of epoch {trainer.current_epoch} was not built by "
                "FlexSampling.train_dataloader(): return it from the datamodule's (or module's) "
                "train_dataloader, e.g. trainer.fit(module, datamodule=flex.datamodule(val))"
            )
        if cur.epoch != trainer.current_epoch:
            raise FlexsampleError(
                f"FlexSampling's curriculum is at epoch {cur.epoch} but the Trainer at epoch "
                f"{trainer.current_epoch}: resume with trainer.fit(..., ckpt_path=...) from a "
                "checkpoint of this fit, or start again with a new FlexSampling"
            )
        self._t0 = time.perf_counter()
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._loss_sum += float(loss.detach())
            self._loss_n += 1

    def _counting(self, trainer: Any) -> bool:
        """Whether this validation counts: the fit's own, not the sanity check's."""
        return trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._counting(trainer):
            c = self.pool.num_classes
            self._hits = torch.zeros(c, dtype=torch.long, device=pl_module.device)
            self._totals = torch.zeros(c, dtype=torch.long, device=pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._counting(trainer) or dataloader_idx != 0:
            return
        preds, labels = self.val_outputs(outputs, batch)
        preds = preds.detach().reshape(-1).long().to(self._hits.device)
        labels = labels.detach().reshape(-1).long().to(self._hits.device)
        c = self.pool.num_classes
        if len(labels) and (labels.min() < 0 or labels.max() >= c):
            raise FlexsampleError(
                f"validation labels must lie in [0, {c}), got {int(labels.min())}.."
                f"{int(labels.max())}"
            )
        self._totals += torch.bincount(labels, minlength=c)
        self._hits += torch.bincount(labels[preds == labels], minlength=c)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._counting(trainer) or len(self._totals) == 0:
            return
        counts = torch.stack([self._hits, self._totals])
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every process, same recall
        hits, totals = counts.cpu().numpy()
        self._val = (trainer.current_epoch, hits, totals)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        cur = self.curriculum
        if self._val is None or self._val[0] != cur.epoch or self._val[2].sum() == 0:
            raise FlexsampleError(
                f"FlexSampling found no validation for epoch {cur.epoch}: it needs the module's "
                "validation (per-class recall) after every epoch; give the Trainer val data "
                "(e.g. datamodule=flex.datamodule(val_loader)) and a validation_step"
            )
        _, hits, totals = self._val
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)
        balanced = float(np.nanmean(recall))
        seconds = 0.0 if self._t0 is None else time.perf_counter() - self._t0
        loss = self._loss_sum / self._loss_n if self._loss_n else math.nan
        cur.end_epoch(EpochResult(loss, seconds), balanced, np.nan_to_num(recall).tolist())
        pl_module.log("flexsample/subset_size", float(self.pool.size))
        pl_module.log("flexsample/step", float(cur.step))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.result is None:
            self.result = self.curriculum.finish()

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The curriculum's state as tensors and plain values (loads with weights_only=True)."""
        val = None if self._val is None else list(self._val)
        return encode_state(
            {
                "curriculum": self.curriculum.state_dict(),
                "begun": self._begun,
                "val": val,
                "loss": [self._loss_sum, self._loss_n],
            }
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = decode_state(state_dict)
        self.curriculum.load_state_dict(state["curriculum"])
        saved = (self.curriculum.loaded_meta or {}).get("labels_hash")
        if saved != self.curriculum.meta["labels_hash"]:
            raise FlexsampleError(
                "the checkpoint's FlexSampling state was made with other training labels; "
                "resume with the same training dataset and labels"
            )
        self._begun = int(state["begun"])
        val = state["val"]
        self._val = None if val is None else (int(val[0]), np.asarray(val[1]), np.asarray(val[2]))
        self._loss_sum, self._loss_n = float(state["loss"][0]), int(state["loss"][1])
        self.result = None


class SubsetDataModule(pl.LightningDataModule):
    """Train on FlexSampling's current subset; validate (and test) on the given data.

    `val_dataloaders` / `test_dataloaders` are DataLoaders or datasets (then batched with the
    callback's batch size and loader options, in order).
    """

    def __init__(self, flex: FlexSampling, val_dataloaders: Any, test_dataloaders: Any = None):
        super().__init__()
        self.flex = flex
        self._val = val_dataloaders
        self._test = test_dataloaders

    def _loader(self, data: Any) -> Any:
        if isinstance(data, Dataset):
            return DataLoader(
                data, batch_size=self.flex.batch_size, shuffle=False, **self.flex.loader_options
            )
        return data

    def train_dataloader(self) -> DataLoader:
        return self.flex.train_dataloader()

    def val_dataloader(self) -> Any:
        return self._loader(self._val)

    def test_dataloader(self) -> Any:
        if self._test is None:
            raise FlexsampleError("this SubsetDataModule was made without test_dataloaders")
        return self._loader(self._test)


class _modes_kept:
    """Restores the train/eval mode of every submodule on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.train(training)


def _labels_hash(labels: np.ndarray, num_classes: int) -> str:
    h = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(str(num_classes).encode())
    return h.hexdigest()[:16]
