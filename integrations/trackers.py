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
"""

from __future__ import annotations

import atexit
import csv
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from flexsample._optional import require
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import EpochResult, ValRecord
from flexsample.engine.loop import Callback, QueryResult, StepRecord
from flexsample.workflows.outputs import CSV_LOG_DIR, TENSORBOARD_DIR

TRACKERS = ("tensorboard", "mlflow", "wandb", "csv")
ACCEPTED = ", ".join(TRACKERS)
DEFAULT_PROJECT = "flexsample"  # MLflow experiment / W&B project unless the environment names one
RESULT_SECTIONS = ("test", "test_last")
# tables kept in results.json (an artifact), not as one metric per cell
SKIPPED_RESULT_KEYS = {"confusion_matrix", "calibration"}


# -- parsing and construction ------------------------------------------------------------------
def parse_log_to(text: str | None) -> list[str]:
    """`--log-to` as a list of tracker names; checks names and installed packages up front.

    Comma-separated, any subset of TRACKERS, duplicates dropped; None, "" or "none": no
    tracker. A tool that is not installed fails here, before the run starts, naming the extra.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return []
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise FlexsampleError(
                f"unknown tracker '{part.strip()}' in --log-to; accepted: {ACCEPTED} "
                "(any subset, comma-separated, e.g. --log-to tensorboard,csv)"
            )
        if name not in names:
            names.append(name)
    for name in names:
        _import_tool(name)
    return names


def _import_tool(name: str) -> Any:
    """The tracker's library (one FlexsampleError line naming the extra when it is missing)."""
    feature = f"--log-to {name}"
    if name == "tensorboard":
        require("tensorboard", "tensorboard", feature)  # torch's writer needs this package
        return require("torch.utils.tensorboard", "tensorboard", feature)
    if name == "mlflow":
        return require("mlflow", "mlflow", feature)
    if name == "wandb":
        return require("wandb", "wandb", feature)
    return csv


def make_trackers(
    names: Sequence[str] | str | None,
    *,
    run_dir: Path,
    log_dir: Path | None = None,
    config: Mapping[str, Any],
    run_name: str,
    group: str | None = None,
) -> list[Tracker]:
    """One callback per tracker name, for `execute(callbacks=...)` or a bench cell.

    `run_dir`: the run folder (default home of the TensorBoard / CSV logs and of the offline W&B
    run; its files become artifacts). `log_dir`: TensorBoard / CSV (and W&B) logs go to
    `log_dir/[group/]run_name` instead. `group` (a bench's folder name) becomes the MLflow
    experiment and the W&B group, and a sub-folder of `log_dir`.
    """
    if names is None or isinstance(names, str):
        names = parse_log_to(names)
    else:
        names = parse_log_to(",".join(names))
    run_dir = Path(run_dir)
    common = {"config": dict(config), "run_name": run_name, "group": group}

    def folder(default_sub: str) -> Path:
        if log_dir is None:
            return run_dir / default_sub if default_sub else run_dir
        return Path(log_dir) / group / run_name if group else Path(log_dir) / run_name

    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(folder(TENSORBOARD_DIR), **common))
        elif name == "csv":
            trackers.append(CSVTracker(folder(CSV_LOG_DIR), **common))
        elif name == "mlflow":
            experiment = group or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            trackers.append(MLflowTracker(experiment, run_dir, **common))
        elif name == "wandb":
            wandb_dir = None if os.environ.get("WANDB_DIR") else folder("")
            trackers.append(WandbTracker(wandb_dir, **common))
    return trackers


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

    def __init__(
        self, *, config: Mapping[str, Any], run_name: str, group: str | None = None
    ) -> None:
        self.config = dict(config)
        self.run_name = run_name
        self.group = group
        self.started = False
        self.closed = False
        self.epochs_done = 0  # epochs whose end was logged (the next epoch's index)
        self._pending: list[QueryResult] = []
        self._extra: dict[str, float] = {}
        self._subset_size: int | None = None

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


# -- TensorBoard ---------------------------------------------------------------------------------
class TensorBoardTracker(Tracker):
    """torch's SummaryWriter: scalars, histograms, the config as text and as HParams.

    A resumed run appends to the same folder; events at or after the epoch it resumes from are
    purged (the writer's purge_step), so TensorBoard shows each epoch once.
    """

    name = "tensorboard"
    state_key = "tracker-tensorboard"

    def __init__(self, folder: Path, **common: Any) -> None:
        super().__init__(**common)
        self.folder = Path(folder)
        self._tb = _import_tool("tensorboard")
        self._purge_step: int | None = None
        self.writer: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epochs_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs_done = int(state.get("epoch", 0))
        self._purge_step = self.epochs_done

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = self._tb.SummaryWriter(str(self.folder), purge_step=self._purge_step)

    def _log_params(self, params: dict[str, str | int | float | bool]) -> None:
        self._params = params
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| parameter | value |\n|---|---|\n{rows}", 0)

    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)

    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None:
        self.writer.add_histogram(tag, values, epoch)

    def _log_final(self, metrics: dict[str, float | int]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.epochs_done)
        # the HParams dashboard compares runs (bench cells) by config and test metrics
        experiment, start, end = hparams(self._params, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary, self.epochs_done)

    def _log_files(self, run_dir: Path, files: list[Path]) -> None:
        # the run folder is the artifact: TensorBoard's events sit in it (or name it, --log-dir)
        self.writer.add_text("run_folder", str(run_dir.resolve()), self.epochs_done)

    def _flush(self) -> None:
        self.writer.flush()

    def _finish(self, status: str) -> None:
        self.writer.close()


# -- CSV ----------------------------------------------------------------------------------------
class CSVTracker(Tracker):
    """Plain CSV files, one row per event, each written and flushed at once (a killed run keeps
    every row it logged): epochs.csv, queries.csv, steps.csv, chosen_scores.csv, test.csv, and
    params.csv (the config).

    Resuming truncates each file to the rows of the checkpoint resumed from, so every epoch and
    query appears once.
    """

    name = "csv"
    state_key = "tracker-csv"
    FILES: ClassVar[dict[str, str]] = {
        "epoch": "epochs.csv",
        "query": "queries.csv",
        "step": "steps.csv",
        "scores": "chosen_scores.csv",
        "test": "test.csv",
    }

    def __init__(self, folder: Path, **common: Any) -> None:
        super().__init__(**common)
        self.folder = Path(folder)
        self.rows: dict[str, int] = {}
        self._saved_rows: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": dict(self.rows)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved_rows = {str(k): int(v) for k, v in dict(state.get("rows", {})).items()}

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for file in self.FILES.values():
            path = self.folder / file
            lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
            existing = max(0, len(lines) - 1)  # data rows below the header
            if self._saved_rows is None:
                self.rows[file] = existing  # a fresh run appending to an older file
            else:
                keep = min(self._saved_rows.get(file, 0), existing)
                if keep < existing:
                    path.write_text("".join(lines[: keep + 1]) if keep else "")
                self.rows[file] = keep

    def _write(self, file: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        path = self.folder / file
        header: list[str] | None = None
        if path.is_file() and path.stat().st_size:
            with path.open(newline="") as fh:
                header = next(csv.reader(fh), None)
        fields = header or list(rows[0])
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fields, restval="", extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerows(rows)
            fh.flush()
        self.rows[file] = self.rows.get(file, 0) + len(rows)

    def _log_params(self, params: dict[str, str | int | float | bool]) -> None:
        path = self.folder / "params.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["parameter", "value"])
            writer.writerows(params.items())

    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None:
        row: dict[str, Any] = {"epoch": epoch}
        for key, value in metrics.items():
            if section != "epoch":
                key = key.split("/", 1)[1]  # query/quota/3 -> quota_3 in queries.csv
            row[key.replace("/", "_")] = value
        self._write(self.FILES[section], [row])

    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None:
        rows = [{"epoch": epoch, "step": step, "score": float(v)} for v in values]
        self._write(self.FILES["scores"], rows)

    def _log_final(self, metrics: dict[str, float | int]) -> None:
        row = {"epoch": self.epochs_done, **{k.replace("/", "_"): v for k, v in metrics.items()}}
        self._write(self.FILES["test"], [row])


# -- MLflow -------------------------------------------------------------------------------------
def mlflow_tracking_uri() -> str:
    """MLflow's own tracking URI when set (MLFLOW_TRACKING_URI, mlflow.set_tracking_uri);
    otherwise a `mlruns/` folder in the current directory.

    mlflow 3 would default to `sqlite:///mlflow.db`, which needs SQLAlchemy, a package that
    mlflow-skinny (the `mlflow` extra) does not install; its file store is refused unless
    MLFLOW_ALLOW_FILE_STORE is true, so for the default `mlruns/` that is set (when unset).
    """
    mlflow = _import_tool("mlflow")
    if mlflow.is_tracking_uri_set():
        return str(mlflow.get_tracking_uri())
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path.cwd() / "mlruns").resolve().as_uri()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MLflowTracker(Tracker):
    """An MLflow run (MlflowClient, no global active run): params, metrics by epoch, the chosen
    scores' histograms as JSON artifacts, the run folder's files under `run/`.

    A resumed run continues the same MLflow run (its id is kept in the checkpoint).
    """

    name = "mlflow"
    state_key = "tracker-mlflow"

    def __init__(self, experiment: str, run_dir: Path, **common: Any) -> None:
        super().__init__(**common)
        _import_tool("mlflow")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = mlflow_tracking_uri()
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.run_id: str | None = None
        self._resume_id: str | None = None
        try:  # the store is reachable and the experiment exists before the run starts
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage != "active":
                raise FlexsampleError(
                    f"MLflow experiment '{experiment}' is deleted; restore it or set "
                    "MLFLOW_EXPERIMENT_NAME to another name"
                )
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
        except FlexsampleError:
            raise
        except Exception as exc:
            raise FlexsampleError(
                f"--log-to mlflow: cannot use the tracking store {self.tracking_uri} (set "
                f"MLFLOW_TRACKING_URI to change it): {_one_line(exc)}"
            ) from None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resume_id = state.get("run_id")

    def _start(self) -> None:
        if self._resume_id:
            try:
                old = self.client.get_run(self._resume_id)
            except Exception:
                old = None  # another tracking store, or the run was deleted: start a new one
            if old is not None and old.info.experiment_id == self.experiment_id:
                self.run_id = self._resume_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
        tags = {"flexsample.run_dir": str(self.run_dir.resolve())}
        if self.group:
            tags["flexsample.group"] = self.group
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id

    def _log_params(self, params: dict[str, str | int | float | bool]) -> None:
        if self._resume_id == self.run_id:
            return  # a resumed run has them already
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, epoch) for k, v in metrics.items() if math.isfinite(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None:
        doc = {"epoch": epoch, "step": step, **_histogram(values)}
        self.client.log_dict(self.run_id, doc, f"chosen_scores/step_{step:03d}.json")

    def _log_final(self, metrics: dict[str, float | int]) -> None:
        self._log_metrics("test", self.epochs_done, metrics)

    def _log_files(self, run_dir: Path, files: list[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), "run")

    def _finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


# -- Weights & Biases ---------------------------------------------------------------------------
def wandb_mode() -> str | None:
    """The W&B mode to ask for: W&B's own choice (WANDB_MODE, `wandb offline`, online) when the
    user is logged in or set WANDB_MODE; otherwise offline (sync later with `wandb sync`).

    Looks for credentials only locally (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the netrc
    entry `wandb login` writes); nothing here touches the network.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    return None if _wandb_netrc_key() else "offline"


def _wandb_netrc_key() -> bool:
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=base))
    except ImportError:  # another wandb version: read the netrc file as W&B writes it
        import netrc
        from urllib.parse import urlparse

        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        try:
            return netrc.netrc(path).authenticators(urlparse(base).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False
    except Exception:
        return False  # a malformed entry: W&B would refuse it too


class WandbTracker(Tracker):
    """A W&B run (project WANDB_PROJECT or 'flexsample', group = the bench): config, metrics
    against `epoch`, histograms, test metrics in the summary, the run folder as an artifact.

    Offline unless the user is logged in (see `wandb_mode`); an offline run lies in
    `<dir>/wandb/offline-run-*` and uploads with `wandb sync`.
    """

    name = "wandb"

    def __init__(self, folder: Path | None, **common: Any) -> None:
        super().__init__(**common)
        self.wandb = _import_tool("wandb")
        self.folder = None if folder is None else Path(folder)
        self.mode = wandb_mode()
        self.run: Any = None

    def _start(self) -> None:
        options: dict[str, Any] = {}
        if "WANDB_CONSOLE" not in os.environ:
            options["console"] = "off"  # progress bars are no log; the run folder has the rest
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=self.run_name,
            group=self.group,
            config=self.config,
            dir=None if self.folder is None else str(self.folder),
            mode=self.mode,
            reinit="create_new",  # bench cells in one process each get their own run
            settings=self.wandb.Settings(**options),
        )
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def _log_metrics(self, section: str, epoch: int, metrics: dict[str, float | int]) -> None:
        self.run.log({**metrics, "epoch": epoch})

    def _log_histogram(self, tag: str, values: np.ndarray, epoch: int, step: int) -> None:
        self.run.log({tag: self.wandb.Histogram(values), "epoch": epoch})

    def _log_final(self, metrics: dict[str, float | int]) -> None:
        self.run.summary.update(metrics)

    def _log_files(self, run_dir: Path, files: list[Path]) -> None:
        if not files:
            return
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"run-{self.run_name}")[:120]
        artifact = self.wandb.Artifact(name, type="run-folder")
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def _finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


__all__ = [
    "TRACKERS",
    "CSVTracker",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "make_trackers",
    "parse_log_to",
]
