"""MLflow: one MLflow run per flexsample run, through MlflowClient."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from flexsample._optional import require
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import TRACKERS

from . import DEFAULT_PROJECT, Tracker, _histogram, check_folder, check_reachable


def mlflow_tracking_uri() -> str:
    """MLflow's own tracking URI when set (MLFLOW_TRACKING_URI, mlflow.set_tracking_uri);
    otherwise a `mlruns/` folder in the current directory.

    mlflow 3 would default to `sqlite:///mlflow.db`, which needs SQLAlchemy, a package that
    mlflow-skinny (the `mlflow` extra) does not install; its file store is refused unless
    MLFLOW_ALLOW_FILE_STORE is true, so for the default `mlruns/` that is set (when unset).
    """
    mlflow = require("mlflow", "mlflow", "--log-to mlflow")
    if mlflow.is_tracking_uri_set():
        return str(mlflow.get_tracking_uri())
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path.cwd() / "mlruns").resolve().as_uri()


FIX = "set MLFLOW_TRACKING_URI to a reachable server or to a folder, file:///path"


def check_store(uri: str) -> None:
    """The MLflow tracking store at `uri`, checked before the run: an http(s) server must
    accept a connection within a few seconds (instead of MLflow's minutes of retries), a
    file store's folder or a SQLite file's folder must be writable. Other stores (databricks,
    a database server) are left to MLflow."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        check_reachable(
            "mlflow", uri, f"start the tracking server or {FIX}", what="tracking server"
        )
    elif scheme == "file" or (not scheme and uri):
        path = Path(url2pathname(parts.path)) if scheme else Path(uri)
        check_folder("mlflow", path, FIX)
    elif scheme == "sqlite" and parts.path not in ("", "/", "/:memory:"):
        check_folder("mlflow", Path(parts.path[1:]).parent, FIX)  # sqlite:///rel, sqlite:////abs


@contextlib.contextmanager
def _few_retries() -> Iterator[None]:
    """MLflow's first requests (the experiment lookup) without its minutes of retries, unless
    the user set their own retry and timeout settings."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [k for k in quick if k not in os.environ]
    os.environ.update({k: quick[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    """An MLflow run (MlflowClient, no global active run): params, metrics by epoch, the chosen
    scores' histograms as JSON artifacts, the run folder's files under `run/`.

    A resumed run continues the same MLflow run (its id is kept in the checkpoint).
    """

    name = "mlflow"
    state_key = "tracker-mlflow"
    requires = ("mlflow",)
    extra = "mlflow"

    def __init__(
        self,
        experiment: Annotated[
            str | None,
            opt(
                "MLflow experiment [default: the bench's name for bench cells, else "
                f"MLFLOW_EXPERIMENT_NAME, else '{DEFAULT_PROJECT}']",
                min_length=1,
            ),
        ] = None,
        **runtime: Any,
    ) -> None:
        super().__init__(**runtime)
        self.check_installed()
        experiment = (
            experiment or self.group or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        )
        self.tracking_uri = mlflow_tracking_uri()
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._resume_id: str | None = None
        self.check_destination()  # the store is reachable and the experiment exists

    def check_destination(self) -> None:
        """The tracking store answers (a server within a few seconds, a folder or SQLite file
        that can be written) and the experiment exists (made if new); once per tracker."""
        if self.experiment_id is not None:
            return
        check_store(self.tracking_uri)
        from mlflow.tracking import MlflowClient

        try:
            with _few_retries():
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                found = self.client.get_experiment_by_name(self.experiment)
                if found is not None and found.lifecycle_stage != "active":
                    raise FlexsampleError(
                        f"MLflow experiment '{self.experiment}' is deleted; restore it or set "
                        "MLFLOW_EXPERIMENT_NAME to another name"
                    )
                self.experiment_id = (
                    found.experiment_id if found else self.client.create_experiment(self.experiment)
                )
        except FlexsampleError:
            raise
        except Exception as exc:
            raise FlexsampleError(
                f"--log-to mlflow: cannot use the tracking store {self.tracking_uri} ({FIX}): "
                f"{_one_line(exc)}"
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
        tags = {"flexsample.run_dir": str(Path(self.run_dir or ".").resolve())}
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
        if self.run_id is not None:  # None: its start failed (that error is the one shown)
            self.client.set_terminated(self.run_id, status=status)
