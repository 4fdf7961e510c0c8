"""One run as a pipeline: config -> dataset -> pool -> anchors -> curriculum -> test -> outputs.

The CLI, the Python API and later launchers call `execute`; it prints nothing itself: progress
reaches the caller through loop callbacks and the run's `Reporter`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import platform
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexsample._version import __version__
from flexsample.datasets.base import LTDataset, build_dataset
from flexsample.engine.checkpoint import (
    load_checkpoint,
    prev_path,
    recover_checkpoint,
    temp_paths,
)
from flexsample.engine.distributed import Ranks
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.faults import fault_point
from flexsample.engine.interfaces import Allocation, Anchors, Estimator, Schedule, ValRecord
from flexsample.engine.loop import Callback, Curriculum, LoopResult, StepRecord
from flexsample.engine.pool import Pool
from flexsample.engine.registries import get_allocation, get_anchors, get_policy
from flexsample.engine.registry import import_plugin
from flexsample.engine.scoring import check_acquisition
from flexsample.engine.validation import plugin_call, select_anchors
from flexsample.training.data import SplitLoader
from flexsample.training.evaluate import evaluate
from flexsample.training.losses import LOSSES
from flexsample.training.models import SMALL_CNN, create_model
from flexsample.training.samplers import SAMPLERS
from flexsample.training.trainer import TrainConfig, Trainer

from . import decouple as decouple_step
from . import outputs as out_files
from . import rundir
from .config import RunConfig, stable_hash
from .distributed import Launch
from .plots import plot_curves, plot_reliability
from .progress import Reporter

TINY_IMAGE = 32  # images at most this size default to the small CNN


@dataclass
class Components:
    estimator: Estimator
    schedule: Schedule
    allocation: Allocation
    anchors: Anchors


def load_plugins(modules: list[str]) -> None:
    for m in modules:
        import_plugin(m)


def build_components(cfg: RunConfig) -> Components:
    """Every named component, built before any data is touched, so bad names fail fast."""
    from flexsample.estimators import build_estimator

    options = cfg.model_dump()
    comps = Components(
        estimator=build_estimator(cfg.estimator, **options),
        schedule=get_policy(cfg.policy, **options),
        allocation=get_allocation(cfg.allocation, **options),
        anchors=get_anchors(cfg.anchors, **options),
    )
    LOSSES.get(cfg.loss)
    SAMPLERS.get(cfg.sampler)
    if cfg.tau is not None and cfg.decouple != "tau-norm":
        raise FlexsampleError(
            f"--tau applies to --decouple tau-norm only (this run has --decouple {cfg.decouple});"
            " drop --tau or add --decouple tau-norm"
        )
    check_acquisition(cfg.acquisition, comps.estimator)
    plugin_call("policy", comps.schedule, "validate", cfg.rounds, cfg.epochs_per_round)
    return comps


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FlexsampleError(
            f"unknown --device '{name}'; accepted: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlexsampleError(f"--device {name}: CUDA is not available here; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlexsampleError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type != "cpu":
        raise FlexsampleError(f"unsupported --device '{name}'; accepted: auto, cpu, cuda, cuda:N")
    return dev


def load_dataset(cfg: RunConfig, reporter: Reporter | None = None) -> LTDataset:
    return build_dataset(
        cfg.dataset,
        imbalance_ratio=cfg.imbalance_ratio,
        data_seed=cfg.data_seed,
        data_dir=cfg.data_dir,
        splits_dir=cfg.splits_dir,
        image_size=cfg.image_size,
        skip_missing=cfg.skip_missing,
        cache_dir=cfg.cache_dir,
        profile=cfg.profile,
        num_classes=cfg.num_classes,
        progress=reporter,
    )


def resolved_backbone(cfg: RunConfig, ds: LTDataset) -> str:
    if cfg.backbone != "auto":
        return cfg.backbone
    return SMALL_CNN if ds.image_size <= TINY_IMAGE else "resnet18"


def make_model(cfg: RunConfig, ds: LTDataset, pretrained: bool = True) -> torch.nn.Module:
    """The classifier; `pretrained=False` skips the weights file (about to load a checkpoint)."""
    weights = cfg.pretrained if pretrained else None
    return create_model(
        resolved_backbone(cfg, ds), ds.num_classes, ds.in_chans, cfg.dropout, weights
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "flexsample": __version__}
    for pkg in ("torch", "torchvision", "timm", "numpy", "faiss-cpu", "scikit-learn", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_out(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.estimator}-{cfg.policy}"


def prepare_out(out: Path, overwrite: bool) -> None:
    """Check `--out` before any set-up work; it changes nothing on disk.

    The folder itself is created (or an old run replaced) by `execute`, once the new run's
    set-up passed every check.
    """
    rundir.check_target(out, overwrite)


def val_curve(history: list[ValRecord], records: list[StepRecord]) -> list[tuple[int, int, float]]:
    """(epoch, subset size, val balanced accuracy) for every trained epoch."""
    curve = []
    for v in history:
        size = next(
            (r.subset_size for r in records if r.epoch <= v.epoch < r.epoch + r.epochs), None
        )
        if size is not None:
            curve.append((v.epoch, size, v.balanced_accuracy))
    return curve


@dataclass
class RunOutcome:
    """What a finished run hands back to its caller (results.json's content and the steps).

    `already_finished`: a `--resume` found the run complete and changed nothing.
    """

    results: dict[str, Any]
    records: list[StepRecord]
    class_names: list[str]
    out: Path
    already_finished: bool = False


class _CheckpointWatch(Callback):
    """Remembers the epoch of the last checkpoint written (what a resume would continue)."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    def on_checkpoint(self, epoch: int) -> None:
        self.epoch = epoch


def execute(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    reporter: Reporter | None = None,
    launch: Launch | None = None,
) -> RunOutcome:
    """Run one configuration into the run folder `out`, or continue it (`resume`).

    `launch` (`workflows.distributed.start` under torchrun): every rank calls this with the
    same arguments; training, evaluation and scoring are sharded over the ranks, and rank 0
    alone writes `out` (give progress displays and trackers to rank 0 only).

    A new run is set up completely (plugins, components, device, dataset, model, anchors)
    before `out` is touched; the folder then appears whole, replacing an old flexsample run
    only with `overwrite`. A failure or an interrupt before the first checkpoint removes the
    new folder again; after it, the exception carries `resume_out` (the folder to resume).
    Callbacks that are context managers (progress displays) are entered around the loop.
    """
    reporter = reporter or Reporter()
    ranks = launch.ranks if launch is not None else Ranks.local()
    if resume:
        return _resume(cfg, out, callbacks, reporter, launch)
    t_start = time.perf_counter()
    agree_on_rank0(ranks, lambda: rundir.check_target(out, overwrite))
    with reporter.phase("loading"):
        setup = set_up(cfg, reporter=reporter, launch=launch)
    run_id = ranks.broadcast_object(uuid.uuid4().hex)
    doc = config_document(cfg, setup, run_id)
    watch = _CheckpointWatch()
    loop, recorder = build_loop(cfg, setup, out, [watch, *callbacks], _meta(doc, ranks))
    with reporter.phase("anchors"):
        start_from_anchors(cfg, setup, loop, reporter)
    loop.meta["pretrain_s"] = setup.pretrain_s  # in every checkpoint: a resume reports it

    def fill(folder: Path) -> None:
        out_files.write_json(folder / out_files.CONFIG, doc)
        (folder / out_files.ROUNDS).touch()
        recorder.write_selection(folder)
        recorder.write_scores(folder)

    # rank 0 writes the folder; the other ranks train, score and evaluate with it
    lock = rundir.install(out, overwrite, fill) if ranks.is_main else None
    try:
        return _train_and_report(cfg, setup, out, loop, callbacks, reporter, watch, t_start)
    except BaseException as exc:
        if ranks.is_main and not _has_checkpoint(out):
            rundir.remove_new_run(out)
        new = _annotated(exc, out, watch)
        if new is exc:
            raise
        raise new from exc
    finally:
        if lock is not None:
            lock.release()


def join_launch(
    cfg: RunConfig, target: Path, *, resume: bool, overwrite: bool
) -> tuple[Launch | None, Path]:
    """Under torchrun: join the process group, agree on rank 0's run folder (its timestamp)
    and check it on rank 0 (every rank fails alike); alone: check the folder. Call after the
    config and its components were checked (every rank checks them the same way)."""
    from . import distributed

    launch = distributed.start(cfg.device, cfg.dist_timeout)  # None unless under torchrun
    ranks = launch.ranks if launch is not None else Ranks.local()
    target = ranks.broadcast_object(target)
    if not resume:  # checks only: execute swaps the new run in
        agree_on_rank0(ranks, lambda: prepare_out(target, overwrite))
    return launch, target


def _meta(doc: dict[str, Any], ranks: Ranks) -> dict[str, Any]:
    """What every checkpoint records of its run: the run id, the config (and its hash) and
    the number of processes (torchrun's world size) it ran on."""
    return {
        "run_id": doc["run_id"],
        "config": doc["config"],
        "config_hash": stable_hash(doc["config"]),
        "world_size": ranks.world,
    }


def agree_on_rank0(ranks: Ranks | None, check: Callable[[], Any]) -> Any:
    """Run `check` on rank 0 and share its result, or its FlexsampleError (every rank then
    raises the same one): checks of files only rank 0 may see (the run folder)."""
    ranks = ranks or Ranks.local()
    outcome: tuple[Any, str | None] = (None, None)
    if ranks.is_main:
        try:
            outcome = (check(), None)
        except FlexsampleError as exc:
            if not ranks.sharded:
                raise
            outcome = (None, str(exc))
    value, error = ranks.broadcast_object(outcome)
    if error is not None:
        raise FlexsampleError(error)
    return value


def _annotated(exc: BaseException, out: Path, watch: _CheckpointWatch) -> BaseException:
    """The exception to re-raise: with `resume_out` when the run can be resumed.

    A full disk (or another file-system error) after a checkpoint becomes one line that says
    the last checkpoint is intact and gives the resume command.
    """
    resumable = _has_checkpoint(out)
    os_error = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(os_error, OSError) and os_error.errno in rundir.ENVIRONMENT_ERRNOS:
        cause = os_error.strerror or str(os_error)
        fix = "free some space" if os_error.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        which = "last checkpoint" + ("" if watch.epoch is None else f" (epoch {watch.epoch})")
        if resumable:
            exc = FlexsampleError(
                f"cannot write run folder {out}: {cause}; the {which} is intact: {fix}, then "
                f"resume with: {rundir.resume_command(out)}"
            )
        else:
            exc = FlexsampleError(
                f"cannot write run folder {out}: {cause}; nothing was kept (it stopped before "
                "its first checkpoint)"
            )
    if resumable:
        exc.resume_out = out  # type: ignore[attr-defined]
    return exc


def _has_checkpoint(out: Path, temps: bool = False) -> bool:
    """Whether `out` holds a checkpoint file (the watch may lag the file by a callback);
    with `temps`, a complete temporary one left by a crash counts too."""
    path = out / out_files.CHECKPOINT
    if path.is_file() or prev_path(path).is_file():
        return True
    return temps and out.is_dir() and bool(temp_paths(path))


def _train_and_report(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    loop: Curriculum,
    callbacks: Sequence[Callback],
    reporter: Reporter,
    watch: _CheckpointWatch,
    t_start: float,
) -> RunOutcome:
    """The curriculum, the test evaluation and the reports of a run whose folder exists.

    Context-manager callbacks are entered around the loop (progress displays), those that also
    take `on_run_end` (trackers) around the whole run, so a failure in evaluation or in the
    reports still closes them."""
    with contextlib.ExitStack() as trackers:
        for cb in callbacks:
            if hasattr(cb, "__enter__") and hasattr(cb, "on_run_end"):
                trackers.enter_context(cb)  # type: ignore[arg-type]
        return _loop_and_report(cfg, setup, out, loop, callbacks, reporter, t_start)


def _loop_and_report(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    loop: Curriculum,
    callbacks: Sequence[Callback],
    reporter: Reporter,
    t_start: float,
) -> RunOutcome:
    ranks = setup.ranks
    with contextlib.ExitStack() as stack:
        for cb in callbacks:
            if hasattr(cb, "__enter__") and not hasattr(cb, "on_run_end"):
                stack.enter_context(cb)  # type: ignore[arg-type]
        result = loop.run()
    t_eval = time.perf_counter()
    fault_point("evaluation")
    if cfg.decouple != "none" and ranks.is_main:  # a run killed inside stage 2 re-evaluates
        with rundir.os_errors(out):  # stage 1 (resume)
            decouple_step.restore_stage1(out)
    with reporter.phase("evaluation"):
        test, last = evaluate_run(cfg, setup, out, loop.pool)
    results = results_document(setup, result, loop.pool, test, last)
    decouple_s = 0.0
    if cfg.decouple != "none":  # stage 2: top-level `test` becomes the decoupled model's
        doc = None
        if ranks.is_main:  # one feature pass and a small head fit: rank 0 alone
            with reporter.phase(f"decoupling ({cfg.decouple})"), rundir.os_errors(out):
                doc = decouple_step.run_stage2(cfg, setup, out, test, reporter)
        results["decouple"] = ranks.broadcast_object(doc)
        results["test"] = results["decouple"]["stage2"]["test"]
        decouple_s = float(results["decouple"]["seconds"])
        results["timings"]["decouple_s"] = decouple_s
    results["timings"]["total_s"] = time.perf_counter() - t_start
    results["timings"]["eval_s"] = time.perf_counter() - t_eval - decouple_s
    pretrain_s = float(loop.meta.get("pretrain_s", 0.0))
    results["compute"] = compute_document(cfg, setup, result, pretrain_s, results["timings"])
    if "decouple" in results:  # images through the frozen backbone, and the stage's seconds
        results["compute"]["decouple_samples"] = results["decouple"]["feature_samples"]
        results["compute"]["decouple_s"] = decouple_s
    results["world_size"] = ranks.world
    if not ranks.is_main:
        return RunOutcome(results, result.records, setup.ds.class_names, out)
    with rundir.os_errors(out):
        write_reports(cfg, setup, out, loop, result, results)
    for cb in callbacks:  # trackers log the test metrics and the finished folder's files
        if callable(getattr(cb, "on_run_end", None)):
            cb.on_run_end(results, out)  # type: ignore[attr-defined]
    return RunOutcome(results, result.records, setup.ds.class_names, out)


def _resume(
    cfg: RunConfig,
    out: Path,
    callbacks: Sequence[Callback],
    reporter: Reporter,
    launch: Launch | None = None,
) -> RunOutcome:
    """Continue the run in `out` from its checkpoint, under the run folder's lock.

    Under torchrun rank 0 reads the folder and sends the checkpoint to the other ranks (their
    nodes need not see the folder)."""
    t_start = time.perf_counter()
    ranks = launch.ranks if launch is not None else Ranks.local()
    if not ranks.is_main:
        state = ranks.broadcast_object(None)
        if state is None:  # rank 0 found the run finished or failed: it says so
            return RunOutcome({}, [], [], out, already_finished=True)
        return _resume_from(cfg, out, state, callbacks, reporter, launch, None, t_start)
    try:
        doc = rundir.read_config_document(out)
        if not _has_checkpoint(out, temps=True):
            raise FlexsampleError(
                f"{out} has no checkpoint to resume from (the run stopped before its first "
                "epoch ended); start it again with --overwrite"
            )
        lock = rundir.RunLock.acquire(out)
    except BaseException:
        ranks.broadcast_object(None)
        raise
    with lock:
        try:
            with rundir.os_errors(out, "read the run folder"):
                state, sentence = recover_checkpoint(out / out_files.CHECKPOINT)
            rundir.check_checkpoint_meta(out, doc, state.get("meta"))
            epoch = int(state.get("epoch", 0))
            done = rundir.finished_results(out, epoch, cfg.rounds * cfg.epochs_per_round)
        except BaseException:
            ranks.broadcast_object(None)
            raise
        if done is not None:
            ranks.broadcast_object(None)
            names = list(done.get("class_names", []))
            return RunOutcome(done, [], names, out, already_finished=True)
        ranks.broadcast_object(state)
        if sentence:
            reporter.message(sentence)
        saved_world = int((state.get("meta") or {}).get("world_size", 1))
        if saved_world != ranks.world:
            reporter.message(
                f"resuming a run started on {saved_world} process(es) with {ranks.world}: the "
                "data order and global batches are the same, but batch-norm statistics (per "
                "rank unless --sync-bn) and the order of floating-point sums change, so the "
                "result will not be bit-identical to an uninterrupted run"
            )
        doc_meta = _meta({**doc, "run_id": doc.get("run_id", "")}, ranks)
        return _resume_from(cfg, out, state, callbacks, reporter, launch, doc_meta, t_start)


def _resume_from(
    cfg: RunConfig,
    out: Path,
    state: dict[str, Any],
    callbacks: Sequence[Callback],
    reporter: Reporter,
    launch: Launch | None,
    fallback_meta: dict[str, Any] | None,
    t_start: float,
) -> RunOutcome:
    watch = _CheckpointWatch(int(state.get("epoch", 0)))
    try:
        with reporter.phase("loading"):
            setup = set_up(cfg, resume=True, reporter=reporter, launch=launch)
        meta = dict(state.get("meta") or fallback_meta or {})
        meta["world_size"] = setup.ranks.world
        loop, recorder = build_loop(cfg, setup, out, [watch, *callbacks], meta)
        loop.load_state_dict(state)
        if recorder is not None:
            with rundir.os_errors(out):
                recorder.restore(loop.records, loop.step)
        return _train_and_report(cfg, setup, out, loop, callbacks, reporter, watch, t_start)
    except BaseException as exc:
        new = _annotated(exc, out, watch)
        if new is exc:
            raise
        raise new from exc


@dataclass
class Setup:
    """Everything a run builds before training: components, device, data and model."""

    comps: Components
    device: torch.device
    ds: LTDataset
    model: torch.nn.Module
    pretrain_s: float = 0.0  # wall time of SSL pre-training (or its cache read) in this process
    ranks: Ranks = field(default_factory=Ranks.local)  # torchrun's process group, or alone


def set_up(
    cfg: RunConfig,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    launch: Launch | None = None,
) -> Setup:
    """Plugins, components, device, dataset and model (SSL-initialised for a fresh ssl run).

    Under torchrun (`launch`) the device is the rank's own and SSL pre-training runs DDP."""
    from flexsample.datasets.images import tune_allocator

    tune_allocator()  # big decoded batches reuse freed memory instead of page-faulting anew
    load_plugins(cfg.plugin)
    comps = build_components(cfg)
    device = resolve_device(cfg.device) if launch is None else launch.device
    ranks = launch.ranks if launch is not None else Ranks.local()
    ds = load_dataset(cfg, reporter)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, ds)
    pretrain_s = 0.0
    if cfg.init == "ssl" and not resume:
        from flexsample.training.ssl import init_from_ssl

        t0 = time.perf_counter()
        init_from_ssl(
            model,
            ds,
            lambda: make_model(cfg, ds),
            **_ssl_options(cfg, ds, device, reporter, ranks),
            pretrained=cfg.pretrained,
        )
        pretrain_s = time.perf_counter() - t0
    return Setup(comps, device, ds, model, pretrain_s, ranks)


def config_document(cfg: RunConfig, setup: Setup, run_id: str = "") -> dict[str, Any]:
    """config.json: the config as asked, plus what it resolved to on this machine."""
    device = setup.device
    device_name = str(device) + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    )
    return {
        "config": cfg.model_dump(),
        "resolved": resolved_values(cfg, setup),
        "run_id": run_id,
        "flexsample_version": __version__,
        "versions": versions(),
        "device": device_name,
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed},
        "split_hash": setup.ds.split_hash(),
        "dataset_info": setup.ds.info,
        "command": sys.argv,
    }


def resolved_values(cfg: RunConfig, setup: Setup) -> dict[str, Any]:
    """What 'auto' and unset options became here: backbone, image size, device, workers.

    `workers` / `eval_workers`: the worker processes the training / evaluation DataLoaders
    use (0 for splits held in memory, which are sliced without a DataLoader).
    """
    from flexsample.datasets.images import dataloader_options

    ds, device = setup.ds, setup.device

    def workers(train: bool) -> int:
        split = ds.train if train else ds.test
        if getattr(split, "in_memory", None) is not None:
            return 0
        cached = getattr(split, "cache", None) is not None
        return int(dataloader_options(device, cfg.workers, train, cached)["num_workers"])

    return {
        "backbone": resolved_backbone(cfg, ds),
        "image_size": int(ds.image_size),
        "device": str(device),
        "workers": workers(True),
        "eval_workers": workers(False),
    }


def build_loop(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    callbacks: Sequence[Callback],
    meta: dict[str, Any] | None = None,
) -> tuple[Curriculum, out_files.RunRecorder]:
    """The trainer, the pool and the curriculum around them, checkpointing into `out`.

    Under torchrun only rank 0 checkpoints and records (the recorder is None elsewhere)."""
    ds, device, ranks = setup.ds, setup.device, setup.ranks
    trainer = Trainer(
        setup.model,
        ds.train,
        ds.val,
        ds.num_classes,
        TrainConfig(
            epochs_per_round=cfg.epochs_per_round,
            epoch_budget=cfg.rounds * cfg.epochs_per_round,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            loss=cfg.loss,
            loss_params=cfg.model_dump(),
            sampler=cfg.sampler,
            mixup=cfg.mixup,
            logit_adjust=cfg.logit_adjust,
            seed=cfg.seed,
            num_workers=cfg.workers,
            samples_per_epoch=len(ds.train.labels) if cfg.budget == "samples" else None,
            restart=cfg.restart,
            lr_subset_scale=cfg.lr_subset_scale,
        ),
        device,
        ranks=ranks,
        sync_bn=cfg.sync_bn,
    )
    pool = Pool(ds.train.labels, ds.num_classes)
    recorder = out_files.RunRecorder(out, pool, ds.train.ids) if ranks.is_main else None
    loop = Curriculum(
        pool,
        setup.comps.schedule,
        setup.comps.allocation,
        setup.comps.estimator,
        trainer,
        SplitLoader(ds.train, False, device, cfg.workers).inputs,
        rounds=cfg.rounds,
        epochs_per_round=cfg.epochs_per_round,
        seed=cfg.seed,
        score_batch_size=cfg.score_batch_size,
        acquisition=cfg.acquisition,
        acquisition_beta=cfg.acquisition_beta,
        checkpoint_dir=out if ranks.is_main else None,
        callbacks=[recorder, *callbacks] if recorder is not None else list(callbacks),
        meta=meta,
        mc_source=cfg.mc_source,
        snapshots=cfg.snapshots,
        ranks=ranks,
        checkpoint_on=cfg.checkpoint_on,
    )
    return loop, recorder


def start_from_anchors(
    cfg: RunConfig, setup: Setup, loop: Curriculum, reporter: Reporter | None = None
) -> None:
    """Choose the anchor set and put it in the pool as step 0."""
    ds = setup.ds
    t0 = time.perf_counter()
    features = _anchor_features(
        cfg, ds, setup.comps.anchors, setup.device, reporter, setup.ranks
    )
    if _uses_ssl_anchors(cfg, setup):
        setup.pretrain_s += time.perf_counter() - t0
    comps = setup.comps
    anchors = select_anchors(comps.anchors, ds.train.labels, ds.num_classes, cfg.seed, features)
    loop.start(anchors)


def evaluate_run(
    cfg: RunConfig, setup: Setup, out: Path, pool: Pool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test metrics of the last weights, then of best.pt (which replaces the model's weights)."""
    ds, device, model, ranks = setup.ds, setup.device, setup.model, setup.ranks
    groups = ds.group_of_labels()
    options = (cfg.logit_adjust, cfg.score_batch_size, cfg.workers)
    last = evaluate(model, ds.test, device, groups, pool.subset_counts(), *options, ranks=ranks)
    best = ranks.broadcast_object(load_checkpoint(out / out_files.BEST) if ranks.is_main else None)
    model.load_state_dict(best["model"])
    test = evaluate(model, ds.test, device, groups, best["subset_counts"], *options, ranks=ranks)
    return test, last


def results_document(
    setup: Setup, result: LoopResult, pool: Pool, test: dict[str, Any], last: dict[str, Any]
) -> dict[str, Any]:
    """results.json (the caller fills in total and evaluation time)."""
    ds = setup.ds
    records = [r.to_json() for r in result.records]
    return {
        "class_names": ds.class_names,
        "test": test,
        "test_last": last,
        "best_val_balanced_accuracy": result.best_val_balanced_accuracy,
        "best_epoch": result.best_epoch,
        "subset_size_at_best": result.subset_size_at_best,
        "final_subset_size": pool.size,
        "train_size": len(ds.train),
        "groups": ds.group_of_labels(),
        "skipped_missing": int(ds.info.get("skipped_missing", 0)),
        "timings": {
            "total_s": 0.0,
            "train_s": sum(r["train_s"] for r in records),
            "score_s": sum(r["score_s"] for r in records),
            "eval_s": 0.0,
        },
    }


def _uses_ssl_anchors(cfg: RunConfig, setup: Setup) -> bool:
    """Whether the anchor strategy takes its features from SSL pre-training."""
    if not getattr(setup.comps.anchors, "needs_features", False):
        return False
    from flexsample.training.anchor_features import resolve_feature_source

    source = resolve_feature_source(cfg.anchor_features, setup.ds.image_size, cfg.pretrained)
    return source == "ssl"


def pretrain_samples(cfg: RunConfig, setup: Setup) -> int:
    """Views forwarded by the SSL pre-training the run's weights or anchors come from
    (`training.ssl.ssl_samples`: 2 views x images x --ssl-epochs), 0 without one.

    Counted once, as the method's cost: `--init ssl` and ssl anchor features share one
    pre-training, and weights read from the cache count as if trained here.
    """
    if cfg.init != "ssl" and not _uses_ssl_anchors(cfg, setup):
        return 0
    from flexsample.training.ssl import default_ssl_batch_size, ssl_samples

    size = int(setup.ds.image_size)
    batch = cfg.ssl_batch_size or default_ssl_batch_size(setup.device, size, cfg.ssl_method)
    return ssl_samples(len(setup.ds.train), cfg.ssl_epochs, batch)


def compute_document(
    cfg: RunConfig,
    setup: Setup,
    result: LoopResult,
    pretrain_s: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """results.json `compute`: what the run cost, in samples processed and seconds per phase.

    `train_samples`: the samples the learner trained on, summed over epochs (what it reports
    per epoch; one pass over the subset with `--budget epochs`, as many as the full training
    set with `--budget samples`; mixup counts each image once).
    `score_samples`: images the scoring contexts pushed through the backbone (one per
    candidate for features, probabilities and head-mode MC dropout; T per candidate for
    full-mode MC; 0 for estimators that read nothing, e.g. `random`; passes an estimator makes
    outside its context are not seen). `pretrain_samples`: see `pretrain_samples`.
    Seconds: `train_s`/`score_s` sum the steps' records, `pretrain_s` is the SSL pre-training
    (or cached-weights read, plus the ssl anchor-feature pass), `eval_s` the test evaluation.
    """
    return {
        "train_samples": int(sum(
            r.train_samples or r.subset_size * r.epochs for r in result.records
        )),
        "score_samples": int(sum(r.score_samples for r in result.records)),
        "pretrain_samples": pretrain_samples(cfg, setup),
        "train_s": float(timings["train_s"]),
        "score_s": float(timings["score_s"]),
        "pretrain_s": float(pretrain_s),
        "eval_s": float(timings["eval_s"]),
        "total_s": float(timings["total_s"]),
    }


def write_reports(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    loop: Curriculum,
    result: LoopResult,
    results: dict[str, Any],
) -> None:
    """results.json, curves.png and calibration.png (the test split, best-val checkpoint)."""
    ds = setup.ds
    out_files.write_json(out / out_files.RESULTS, results)
    title = f"{ds.name}  estimator={cfg.estimator}  policy={cfg.policy}  seed={cfg.seed}"
    plot_curves(
        out / out_files.CURVES,
        [r.to_json() for r in result.records],
        val_curve(loop.history, result.records),
        ds.class_names,
        title,
    )
    test = results["test"]
    plot_reliability(
        out / out_files.CALIBRATION, test["calibration"], test["ece"],
        f"{title}\ntest split, best-validation checkpoint",
    )


def _anchor_features(
    cfg: RunConfig,
    ds: LTDataset,
    anchors: Anchors,
    device: torch.device,
    reporter: Reporter | None = None,
    ranks: Ranks | None = None,
) -> np.ndarray | None:
    if not getattr(anchors, "needs_features", False):
        return None
    from flexsample.training.anchor_features import anchor_features

    return anchor_features(
        cfg.anchor_features,
        ds,
        lambda: make_model(cfg, ds),
        **_ssl_options(cfg, ds, device, reporter, ranks),
        pretrained=cfg.pretrained,
        batch_size=cfg.score_batch_size,
    )


def _ssl_options(
    cfg: RunConfig,
    ds: LTDataset,
    device: torch.device,
    reporter: Reporter | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    return {
        "ranks": ranks,
        "progress": reporter,
        "image_size": ds.image_size,
        "seed": cfg.seed,
        "cache_dir": cfg.cache_dir,
        "ssl_epochs": cfg.ssl_epochs,
        "device": device,
        "backbone": resolved_backbone(cfg, ds),
        "ssl_method": cfg.ssl_method,
        "ssl_batch_size": cfg.ssl_batch_size,
        "num_workers": cfg.workers,
    }


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a run folder was made with (one-line errors for a missing folder or file)."""
    from .config import resolve_config

    rundir.read_config_document(run_dir)
    return resolve_config(run_dir / out_files.CONFIG, {})


def resume_config(out: Path, config_file: Path | None, flags: dict[str, Any]) -> RunConfig:
    """The saved config of the run in `out`, for `--resume` with the flags given again.

    Flags (or a --config file) that repeat the saved values are accepted, so the original
    command with `--resume` appended continues the run; any that differ are refused, listed as
    `--flag: saved -> given`. `--device` may change (a run may continue on another machine).
    """
    from .config import read_config_file, resolve_config

    saved = read_run_config(out)
    given = {k for k, v in flags.items() if v is not None and v != []}
    if config_file is not None:
        given |= set(read_config_file(config_file))
    given.discard("device")
    if given:
        asked = resolve_config(config_file, flags).model_dump()
        diff = rundir.flag_differences(saved.model_dump(), {k: asked[k] for k in given})
        if diff:
            raise FlexsampleError(
                f"--resume continues a run with its own config; these flags differ from the "
                f"saved config of {out} (flag: saved -> given): {'; '.join(diff)}; drop them to "
                "continue the run, or start a new run with another --out"
            )
    if flags.get("device") is not None:
        saved.device = flags["device"]
    return saved


def reevaluate(run_dir: Path, device_name: str | None) -> dict[str, Any]:
    """`flexsample eval`: the run's best.pt on its val and test splits; (re)writes the run's
    calibration.png from the test split where the folder is writable."""
    cfg = read_run_config(run_dir)
    if not (run_dir / out_files.BEST).is_file():
        raise FlexsampleError(f"{run_dir} has no {out_files.BEST} (did the run finish an epoch?)")
    load_plugins(cfg.plugin)
    device = resolve_device(device_name or cfg.device)
    ds = load_dataset(cfg)
    saved = json.loads((run_dir / out_files.CONFIG).read_text())
    if saved.get("split_hash") not in (None, ds.split_hash()):
        raise FlexsampleError(
            f"the dataset's splits differ from those of run {run_dir} (split hash "
            f"{ds.split_hash()} != {saved['split_hash']})"
        )
    model = make_model(cfg, ds, pretrained=False).to(device)
    best = load_checkpoint(run_dir / out_files.BEST)
    model.load_state_dict(best["model"])
    groups = ds.group_of_labels()
    res = {
        name: evaluate(
            model,
            split,
            device,
            groups,
            best["subset_counts"],
            cfg.logit_adjust,
            cfg.score_batch_size,
            cfg.workers,
        )
        for name, split in (("val", ds.val), ("test", ds.test))
    }
    # the picture a finished run has (older runs lack it); a read-only run folder (a shared
    # drive) still gets its metrics, without the picture: res then has no "calibration_png"
    with contextlib.suppress(OSError):
        plot_reliability(
            run_dir / out_files.CALIBRATION, res["test"]["calibration"], res["test"]["ece"],
            f"{ds.name}  test split, best-validation checkpoint (flexsample eval)",
        )
        res["calibration_png"] = str(run_dir / out_files.CALIBRATION)
    return res
