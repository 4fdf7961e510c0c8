"""Experiment trackers as loop callbacks: TensorBoard, MLflow, Weights & Biases and CSV files.

`flexsample run --log-to tensorboard,mlflow` (and bench cells) build them with `make_trackers`;
each is an engine `Callback`, so the engine itself knows nothing of them. All four log the same
quantities, each against the epoch it belongs to (a query made before epoch e is logged at e,
a query step's record at the epoch that closed it), so one x axis serves every chart:

- at the start: the run's config as parameters;
- per epoch: train/loss, train/lr, train/subset_size, val/balanced_accuracy, val/recall/<class>;
- per query: query/step, query/chosen, query/scored, query/score_seconds, query/quota/<class>
  and the chosen samples' scores (a histogram; min / mean / max as scalars);
- per query step, when its training span ends: step/subset_size, step/class_count/<class>,
  step/score_seconds, step/train_seconds, step/epochs, step/best_val_balanced_accuracy;
- at the end: results.json's test/... and test_last/... metrics and the run folder's files.

Each tool's library is imported when the tracker is made (a missing one: one line naming the
extra), and a tracker opens its run on the first event, so a run that fails during set-up
leaves nothing in MLflow or W&B.

Trackers are an open extension point like estimators: each built-in registers itself in the
`TRACKERS` registry (`@TRACKERS.register("csv")`), and an installed package adds its own through
the entry-point group `flexsample.trackers`. A tracker subclasses `Tracker`, declares the modules
it needs (`requires`, checked before the run starts), takes its options as constructor keyword
parameters (e.g. MLflow's `experiment`) and passes the run-time arguments (`run_dir`, `log_dir`,
`config`, `run_name`, `group`: `TRACKERS.runtime`) on to `Tracker.__init__`.

Where a tracker writes is checked before the run starts (`Tracker.check_destination`, called by
`workflows.tracking.build_trackers`, before the dataset and the model are built): a logs folder
must be creatable and writable, a tracking server must accept a connection within
`REACH_TIMEOUT_S` seconds; a problem is one line naming the tracker and the destination.
"""

from __future__ import annotations

import atexit
import importlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np

from flexsample._net import connect_problem, proxy_for
from flexsample._optional import require
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import EpochResult, ValRecord
from flexsample.engine.loop import Callback, QueryResult, StepRecord
from flexsample.engine.registry import TRACKERS
from flexsample.workflows.tracking import build_trackers, check_trackers

DEFAULT_PROJECT = "flexsample"  # MLflow experiment / W&B project unless the environment names one
RESULT_SECTIONS = ("test", "test_last")
# tables kept in results.json (an artifact), not as one metric per cell
SKIPPED_RESULT_KEYS = {"confusion_matrix", "calibration"}
REACH_TIMEOUT_S = 3.0  # how long a tracker's server may take to accept a connection


# -- parsing and construction ------------------------------------------------------------------
def parse_log_to(text: str | None) -> list[str]:
    """`--log-to` as a list of tracker names; checks names and installed packages up front.

    Comma-separated, any subset of the registered trackers (`TRACKERS`: the built-ins and
    those installed packages add), duplicates dropped; None, "" or "none": no tracker. A
    package a tracker needs (its `requires`) that is not installed fails here, before the run
    starts, naming what to install. (`workflows.bench.check_trackers`, which the workflows
    layer calls without importing this package.)
    """
    if text is None or text.strip().lower() in ("", "none"):
        return []
    return check_trackers(text)


def make_trackers(
    names: Sequence[str] | str | None,
    *,
    run_dir: Path,
    log_dir: Path | None = None,
    config: Mapping[str, Any],
    run_name: str,
    group: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Any]:
    """One callback per tracker name, for `execute(callbacks=...)` or a bench cell, each built
    through the `TRACKERS` registry (`TRACKERS.build(name, options, **runtime)`).

    `run_dir`: the run folder (default home of the TensorBoard / CSV logs and of the offline W&B
    run; its files become artifacts). `log_dir`: TensorBoard / CSV (and W&B) logs go to
    `log_dir/[group/]run_name` instead. `group` (a bench's folder name) becomes the MLflow
    experiment and the W&B group, and a sub-folder of `log_dir`. `options`: tracker name ->
    that tracker's options (e.g. `{"mlflow": {"experiment": "ablations"}}`), checked against
    what it declares.
    """
    if names is None or isinstance(names, str):
        names = parse_log_to(names)
    else:
        names = parse_log_to(",".join(names))
    return build_trackers(
        names,
        run_dir=run_dir,
        log_dir=log_dir,
        config=dict(config),
        run_name=run_name,
        group=group,
        options={k: dict(v) for k, v in (options or {}).items()},
    )


def _import_all(name: str, modules: Sequence[str], extra: str | None) -> list[ModuleType]:
    """`modules` imported for `--log-to name`; a missing one is one FlexsampleError line naming
    the flexsample `extra` that installs it (or the package itself)."""
    feature = f"--log-to {name}"
    found = []
    for module in modules:
        if extra:
            found.append(require(module, extra, feature))
            continue
        try:
            found.append(importlib.import_module(module))
        except ImportError:
            top = module.split(".")[0]
            raise FlexsampleError(
                f"{feature} needs the package '{top}', which is not installed; install it "
                f"with: pip install {top}"
            ) from None
    return found


# -- destinations, checked before the run starts --------------------------------------------------
def check_folder(tracker: str, folder: Path, fix: str) -> None:
    """That `--log-to tracker` can create `folder` (or write into it, if it exists); one line
    naming the tracker, the folder and the cause otherwise. Leaves nothing behind (a probe
    file or folder is made and removed at once)."""
    problem = _folder_problem(Path(folder))
    if problem:
        raise FlexsampleError(
            f"--log-to {tracker}: cannot write its logs to {folder}: {problem}; {fix}"
        )


def _folder_problem(folder: Path) -> str | None:
    target = folder.absolute()
    p = target
    while not p.exists() and p != p.parent:  # a file on the way makes its children not exist
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    try:
        if p == target:  # the folder exists: its files go in it
            fd, probe = tempfile.mkstemp(prefix=".flexsample-probe-", dir=p)
            os.close(fd)
            os.unlink(probe)
        else:  # the folder is made under its nearest existing parent
            os.rmdir(tempfile.mkdtemp(prefix=".flexsample-probe-", dir=p))
    except OSError as exc:
        action = "write in" if p == target else "create a folder in"
        return f"cannot {action} {p} ({exc.strerror or exc})"
    return None


def check_reachable(
    tracker: str, url: str, fix: str, timeout: float = REACH_TIMEOUT_S, what: str = "server"
) -> None:
    """That the host of `url` (or the proxy the environment routes it through) accepts a TCP
    connection within `timeout` seconds; one line naming the tracker and `url` otherwise,
    instead of the tool's own minutes of retries."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number
        raise FlexsampleError(
            f"--log-to {tracker}: {url} is not a valid URL ({exc}); {fix}"
        ) from None
    if not host:
        raise FlexsampleError(f"--log-to {tracker}: {url} is not a valid URL (no host); {fix}")
    proxy = proxy_for(parts.scheme, host)
    via = "" if proxy is None else f" through the proxy {proxy[0]}:{proxy[1]}"
    cause = connect_problem(proxy or (host, port), timeout)
    if cause is not None:
        raise FlexsampleError(
            f"--log-to {tracker}: cannot reach the {what} {url}{via} ({cause}); {fix}"
        )


# -- what every tracker logs ---------------------------------------------------------------------
def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The config as flat parameters: nested keys joined by '.', lists as JSON, None as 'none'."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def flat_numbers(value: Any, prefix: str) -> dict[str, float]:
    """Every finite number inside `value` (nested dicts and lists), keyed 'prefix/key/index'."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)):
        if math.isfinite(value):
            out[prefix] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in SKIPPED_RESULT_KEYS:
                out.update(flat_numbers(item, f"{prefix}/{key}"))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out.update(flat_numbers(item, f"{prefix}/{i}"))
    return out


def chosen_scores(result: QueryResult) -> np.ndarray:
    """Scores of the samples a query chose (classes taken whole were not scored)."""
    scores = np.asarray(result.scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    return scores[np.isin(result.candidates, result.chosen)]


def run_files(run_dir: Path) -> list[Path]:
    """The run folder's files worth keeping: results, config, curves, rounds, selection, scores,
    best.pt; not the resume checkpoints (the model and optimizer again, twice), nor hidden
    markers, nor sub-folders (tracker logs)."""
    return sorted(
        p
        for p in Path(run_dir).iterdir()
        if p.is_file() and not p.name.startswith((".", "checkpoint"))
    )


class Tracker(Callback):
    """The common part: turns loop events into metrics, leaves the writing to the subclass.

    A tracker is a context manager (the run pipeline enters it around the loop): leaving with an
    exception closes it as failed or killed; the run's end (`on_run_end`) closes it as finished;
    a process that exits in between closes it as failed (atexit).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # modules to import (checked before the run)
    extra: ClassVar[str | None] = None  # the flexsample extra installing them (None: pip itself)
    subfolder: ClassVar[str] = ""  # its logs' folder inside the run folder (without --log-dir)

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        run_name: str,
        group: str | None = None,
        run_dir: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.config = dict(config)
        self.run_name = run_name
        self.group = group
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.started = False
        self.closed = False
        self.epochs_done = 0  # epochs whose end was logged (the next epoch's index)
        self._pending: list[QueryResult] = []
        self._extra: dict[str, float] = {}
        self._subset_size: int | None = None

    @classmethod
    def check_installed(cls) -> list[ModuleType]:
        """The modules of `requires`, imported (one line naming what to install if one is
        missing); `parse_log_to` calls it before the run starts."""
        return _import_all(cls.name, cls.requires, cls.extra)

    def check_destination(self) -> None:
        """Where this tracker writes, checked before the run starts (`build_trackers` calls
        it): one FlexsampleError line naming the tracker and the destination. The default
        checks nothing; trackers with a logs folder or a server check theirs."""

    def _check_folder(self, folder: Path) -> None:
        """`check_folder` for this tracker's own logs folder, with the flag that moves it."""
        fix = "choose another --log-dir" if self.log_dir is not None else "choose another --out"
        check_folder(self.name, folder, fix)

    @property
    def folder(self) -> Path:
        """Where this tracker's logs go: `log_dir/[group/]run_name` with a log folder, else
        `run_dir/<subfolder>`."""
        if self.log_dir is not None:
            base = self.log_dir / self.group if self.group else self.log_dir
            return base / self.run_name
        if self.run_dir is None:
            raise FlexsampleError(f"tracker '{self.name}' needs run_dir or log_dir")
        return self.run_dir / self.subfolder if self.subfolder else self.run_dir

    # lifecycle ---------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if not self.started and not self.closed:
            self.started = True
            self._start()
            self._log_params(flat_params(self.config))
            atexit.register(self._at_exit)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self.started and not self.closed:
                self._flush()  # the test evaluation and on_run_end come next
            return
        self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def _at_exit(self) -> None:
        self.close("FAILED")

    def close(self, status: str = "FINISHED") -> None:
        """Finish the tracker's run (FINISHED, FAILED or KILLED); later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._at_exit)
        if self.started:
            self._finish(status)

    # loop hooks --------------------------------------------------------------------------------
    def on_query(self, result: QueryResult) -> None:
        self._pending.append(result)  # logged at the epoch it precedes (on_epoch_start)

    def on_epoch_start(self, epoch: int, subset_size: int) -> None:
        self._ensure_started()
        self._subset_size = int(subset_size)
        for result in self._pending:
            self._log_query(epoch, result)
        self._pending.clear()

    def on_epoch_result(self, epoch: int, result: EpochResult) -> None:
        self._extra = {k: float(v) for k, v in result.extra.items()}

    def on_epoch_end(self, epoch: int, loss: float, val: ValRecord, improved: bool) -> None:
        self._ensure_started()
        metrics: dict[str, float | int] = {"train/loss": float(loss)}
        metrics.update({f"train/{k}": v for k, v in self._extra.items()})
        if self._subset_size is not None:
            metrics["train/subset_size"] = self._subset_size
        metrics["val/balanced_accuracy"] = float(val.balanced_accuracy)
        for c, recall in enumerate(val.per_class_recall):
            metrics[f"val/recall/{c}"] = float(recall)
        self._log_metrics("epoch", epoch, metrics)
        self._extra = {}
        self.epochs_done = epoch + 1

    def on_checkpoint(self, epoch: int) -> None:
        if self.started and not self.closed:
            self._flush()  # what a resume would not redo is on disk, even after a SIGKILL

    def on_step_end(self, record: StepRecord) -> None:
        self._ensure_started()
        metrics: dict[str, float | int] = {
            "step/step": int(record.step),
            "step/subset_size": int(record.subset_size),
            "step/score_seconds": float(record.score_s),
            "step/train_seconds": float(record.train_s),
            "step/epochs": int(record.epochs),
        }
        if record.best_val_balanced_accuracy is not None:
            metrics["step/best_val_balanced_accuracy"] = float(record.best_val_balanced_accuracy)
        for c, count in enumerate(record.class_counts):
            metrics[f"step/class_count/{c}"] = int(count)
        self._log_metrics("step", record.epoch + record.epochs, metrics)

    def on_run_end(self, results: Mapping[str, Any], run_dir: Path) -> None:
        """After results.json: the test metrics, the run folder's files, then close."""
        self._ensure_started()
        metrics: dict[str, float | int] = {}
        for section in RESULT_SECTIONS:
            metrics.update(flat_numbers(results.get(section), section))
        for key in ("best_val_balanced_accuracy", "best_epoch", "subset_size_at_best"):
            if isinstance(results.get(key), (int, float)):
                metrics[f"run/{key}"] = results[key]
        self._log_final(metrics)
        self._log_files(Path(run_dir), run_files(Path(run_dir)))
        self.close("FINISHED")

    def _log_query(self, epoch: int, result: QueryResult) -> None:
        picked = chosen_scores(result)
        metrics: dict[str, float | int] = {
            "query/step": int(result.step),
            "query/chosen": len(result.chosen),
            "query/scored": len(result.candidates),
            "query/score_seconds": float(result.seconds),
        }
        for c, quota in enumerate(np.asarray(result.quotas).tolist()):
            metrics[f"query/quota/{c}"] = int(quota)
        finite = picked[np.isfinite(picked)]
        if finite.size:
            metrics["query/chosen_score_min"] = float(finite.min())
            metrics["query/chosen_score_mean"] = float(finite.mean())
            metrics["query/chosen_score_max"] = float(finite.max())
        self._log_metrics("query", epoch, metrics)
        if finite.size:
            self._log_histogram("query/chosen_scores", finite, epoch, result.step)

    # what a tool implements ----------------------------------------------------------------------
    def _start(self) -> None: ...
    def _log_params(self, params: dict[str, str | int | float | bool]) -> None: ...
    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None: ...
    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None: ...
    def _log_final(self, metrics: dict[str, float | int]) -> None: ...
    def _log_files(self, run_dir: Path, files: list[Path]) -> None: ...
    def _flush(self) -> None: ...
    def _finish(self, status: str) -> None: ...


def _histogram(values: np.ndarray, bins: int = 30) -> dict[str, Any]:
    counts, edges = np.histogram(values, bins=min(bins, max(1, len(values))))
    return {"bin_edges": edges.tolist(), "counts": counts.tolist(), "n": int(len(values))}


# the built-in trackers, one module each, registered in TRACKERS (imported last: they
# subclass Tracker); others come from the entry-point group `flexsample.trackers`
from .csv import CSVTracker  # noqa: E402
from .mlflow import MLflowTracker, mlflow_tracking_uri  # noqa: E402
from .tensorboard import TensorBoardTracker  # noqa: E402
from .wandb import WandbTracker, wandb_mode  # noqa: E402

__all__ = [
    "TRACKERS",
    "CSVTracker",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "check_folder",
    "check_reachable",
    "make_trackers",
    "mlflow_tracking_uri",
    "parse_log_to",
    "wandb_mode",
]
