"""CSV files, one per kind of event."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from flexsample.engine.registry import TRACKERS
from flexsample.workflows.outputs import CSV_LOG_DIR

from . import Tracker


@TRACKERS.register("csv")
class CSVTracker(Tracker):
    """Plain CSV files, one row per event, each written and flushed at once (a killed run keeps
    every row it logged): epochs.csv, queries.csv, steps.csv, chosen_scores.csv, test.csv, and
    params.csv (the config).

    Resuming truncates each file to the rows of the checkpoint resumed from, so every epoch and
    query appears once.
    """

    name = "csv"
    state_key = "tracker-csv"
    subfolder = CSV_LOG_DIR
    FILES: ClassVar[dict[str, str]] = {
        "epoch": "epochs.csv",
        "query": "queries.csv",
        "step": "steps.csv",
        "scores": "chosen_scores.csv",
        "test": "test.csv",
    }

    def __init__(self, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.rows: dict[str, int] = {}
        self._saved_rows: dict[str, int] | None = None

    def check_destination(self) -> None:
        self._check_folder(self.folder)

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
