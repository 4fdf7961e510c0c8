"""One run as a pipeline: config -> dataset -> pool -> anchors -> curriculum -> test -> outputs.

The CLI, the Python API and later launchers call `execute`; it prints nothing itself: progress
reaches the caller through loop callbacks and the run's `Reporter`.

This module holds the execution: a new run or a resumed one driven through training,
evaluation and its reports in the run folder. The pieces it builds on live in `setup.py`
(components, dataset, model, loop, anchors), `documents.py` (config.json, results.json,
plots) and `resume.py` (a saved run's config, re-evaluation); their public names are
re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import contextlib
import errno
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flexsample.engine.checkpoint import (
    load_checkpoint,
    prev_path,
    recover_checkpoint,
    temp_paths,
)
from flexsample.engine.distributed import Ranks
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.faults import fault_point
from flexsample.engine.loop import Callback, Curriculum, StepRecord
from flexsample.engine.pool import Pool
from flexsample.training.evaluate import evaluate

from . import decouple as decouple_step
from . import outputs as out_files
from . import rundir
from .config import RunConfig, stable_hash
from .distributed import DistributedRun
from .documents import (
    compute_document,
    config_document,
    pretrain_samples,
    resolved_values,
    results_document,
    val_curve,
    versions,
    write_reports,
)
from .progress import Reporter
from .resume import read_run_config, reevaluate, resume_config
from .setup import (
    TINY_IMAGE,
    Components,
    Setup,
    build_components,
    build_loop,
    load_dataset,
    load_plugins,
    make_model,
    resolve_device,
    resolved_backbone,
    set_up,
    start_from_anchors,
)

__all__ = [
    # execution (this module)
    "RunOutcome",
    "agree_on_rank0",
    "default_out",
    "evaluate_run",
    "execute",
    "join_distributed",
    "prepare_out",
    # set-up (setup.py)
    "TINY_IMAGE",
    "Components",
    "Setup",
    "build_components",
    "build_loop",
    "load_dataset",
    "load_plugins",
    "make_model",
    "resolve_device",
    "resolved_backbone",
    "set_up",
    "start_from_anchors",
    # documents (documents.py)
    "compute_document",
    "config_document",
    "pretrain_samples",
    "resolved_values",
    "results_document",
    "val_curve",
    "versions",
    "write_reports",
    # a saved run (resume.py)
    "read_run_config",
    "reevaluate",
    "resume_config",
]


def default_out(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.estimator}-{cfg.policy}"


def prepare_out(out: Path, overwrite: bool) -> None:
    """Check `--out` before any set-up work; it changes nothing on disk.

    The folder itself is created (or an old run replaced) by `execute`, once the new run's
    set-up passed every check.
    """
    rundir.check_target(out, overwrite)


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
    dist: DistributedRun | None = None,
) -> RunOutcome:
    """Run one configuration into the run folder `out`, or continue it (`resume`).

    `dist` (`workflows.distributed.start` under torchrun): every rank calls this with the
    same arguments; training, evaluation and scoring are sharded over the ranks, and rank 0
    alone writes `out` (give progress displays and trackers to rank 0 only).

    A new run is set up completely (plugins, components, device, dataset, model, anchors)
    before `out` is touched; the folder then appears whole, replacing an old flexsample run
    only with `overwrite`. A failure or an interrupt before the first checkpoint removes the
    new folder again; after it, the exception carries `resume_out` (the folder to resume).
    Callbacks that are context managers (progress displays) are entered around the loop.
    """
    reporter = reporter or Reporter()
    ranks = dist.ranks if dist is not None else Ranks.local()
    if resume:
        return _resume(cfg, out, callbacks, reporter, dist)
    t_start = time.perf_counter()
    agree_on_rank0(ranks, lambda: rundir.check_target(out, overwrite))
    with reporter.phase("loading"):
        setup = set_up(cfg, reporter=reporter, dist=dist)
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


def join_distributed(
    cfg: RunConfig, target: Path, *, resume: bool, overwrite: bool
) -> tuple[DistributedRun | None, Path]:
    """Under torchrun: join the process group, agree on rank 0's run folder (its timestamp)
    and check it on rank 0 (every rank fails alike); alone: check the folder. Call after the
    config and its components were checked (every rank checks them the same way)."""
    from . import distributed

    dist = distributed.start(cfg.device, cfg.dist_timeout)  # None unless under torchrun
    ranks = dist.ranks if dist is not None else Ranks.local()
    target = ranks.broadcast_object(target)
    if not resume:  # checks only: execute swaps the new run in
        agree_on_rank0(ranks, lambda: prepare_out(target, overwrite))
    return dist, target


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
    dist: DistributedRun | None = None,
) -> RunOutcome:
    """Continue the run in `out` from its checkpoint, under the run folder's lock.

    Under torchrun rank 0 reads the folder and sends the checkpoint to the other ranks (their
    nodes need not see the folder)."""
    t_start = time.perf_counter()
    ranks = dist.ranks if dist is not None else Ranks.local()
    if not ranks.is_main:
        state = ranks.broadcast_object(None)
        if state is None:  # rank 0 found the run finished or failed: it says so
            return RunOutcome({}, [], [], out, already_finished=True)
        if state == _RESTART:
            return execute(cfg, out, overwrite=True, callbacks=callbacks, dist=dist)
        return _resume_from(cfg, out, state, callbacks, reporter, dist, None, t_start)
    try:
        doc = rundir.read_config_document(out)
        lock = rundir.RunLock.acquire(out)  # refused while another process runs it
    except BaseException:
        ranks.broadcast_object(None)
        raise
    with lock:
        try:
            found = _recover(out)
            if found is None:  # killed before its first checkpoint
                _check_restartable(out)
            else:
                state, sentence = found
                rundir.check_checkpoint_meta(out, doc, state.get("meta"))
                epoch = int(state.get("epoch", 0))
                done = rundir.finished_results(out, epoch, cfg.rounds * cfg.epochs_per_round)
        except BaseException:
            ranks.broadcast_object(None)
            raise
        if found is None:
            lock.release()  # the new run's folder replaces this one under its own lock
            ranks.broadcast_object(_RESTART)
            return _restart(cfg, out, callbacks, reporter, dist)
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
        return _resume_from(cfg, out, state, callbacks, reporter, dist, doc_meta, t_start)


_RESTART = "restart"  # rank 0 to the others: the run starts again from the beginning
# what a run killed before its first checkpoint may hold (besides its temporary files)
_BEFORE_FIRST_CHECKPOINT = frozenset(
    {
        rundir.MARKER,
        rundir.LOCK,
        out_files.CONFIG,
        out_files.ROUNDS,
        out_files.SELECTION,
        out_files.SCORES,
        out_files.BEST,
        out_files.TENSORBOARD_DIR,
        out_files.CSV_LOG_DIR,
        out_files.WANDB_DIR,
    }
)


def _recover(out: Path) -> tuple[dict[str, Any], str] | None:
    """The checkpoint to resume from and the sentence saying which (`recover_checkpoint`), or
    None when the run never completed one: no checkpoint file, at most half-written temporary
    files (a SIGKILL during the first save)."""
    path = out / out_files.CHECKPOINT
    with rundir.os_errors(out, "read the run folder"):
        if _has_checkpoint(out):
            return recover_checkpoint(path)
        if not temp_paths(path):
            return None
        try:
            return recover_checkpoint(path)  # a complete temporary file is a checkpoint
        except FlexsampleError:
            return None


def _restart(
    cfg: RunConfig,
    out: Path,
    callbacks: Sequence[Callback],
    reporter: Reporter,
    dist: DistributedRun | None,
) -> RunOutcome:
    """`--resume` of a run killed before its first checkpoint: nothing was kept, so the run
    starts again from the beginning with its saved config, replacing the folder (as a new run
    with --overwrite would: the old folder stays until the new one's set-up passed)."""
    reporter.message(
        f"{out} stopped before its first checkpoint (nothing to resume): starting the run "
        "again from the beginning with its saved config"
    )
    return execute(cfg, out, overwrite=True, callbacks=callbacks, reporter=reporter, dist=dist)


def _check_restartable(out: Path) -> None:
    """A run folder without a checkpoint may start again only if flexsample made it and it
    holds nothing but what a run killed before its first checkpoint leaves: config.json,
    rounds.jsonl, selection.npz, scores.npz, perhaps best.pt, tracker logs, temporary files,
    the marker and the lock."""
    if not (out / rundir.MARKER).is_file():
        raise FlexsampleError(
            f"{out} has no checkpoint to resume from and flexsample did not make it (no "
            f"{rundir.MARKER} marker); start a new run with another --out"
        )
    foreign = rundir._foreign_files(out)
    if foreign:
        raise FlexsampleError(
            f"{out} has no checkpoint to resume from and holds files flexsample did not write "
            f"({_shown(foreign)}); move them away to start the run again with --resume, or "
            "choose another --out"
        )
    later = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in _BEFORE_FIRST_CHECKPOINT and not p.name.startswith(".")
    )
    if later:  # its checkpoints were deleted: never replace what it produced silently
        raise FlexsampleError(
            f"{out} has no checkpoint to resume from, but holds files of a run that went on "
            f"({_shown(later)}); start it again with --overwrite, or choose another --out"
        )


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _resume_from(
    cfg: RunConfig,
    out: Path,
    state: dict[str, Any],
    callbacks: Sequence[Callback],
    reporter: Reporter,
    dist: DistributedRun | None,
    fallback_meta: dict[str, Any] | None,
    t_start: float,
) -> RunOutcome:
    watch = _CheckpointWatch(int(state.get("epoch", 0)))
    try:
        with reporter.phase("loading"):
            setup = set_up(cfg, resume=True, reporter=reporter, dist=dist)
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
