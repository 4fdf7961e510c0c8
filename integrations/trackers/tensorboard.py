"""TensorBoard: torch's SummaryWriter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.registry import TRACKERS
from flexsample.workflows.outputs import TENSORBOARD_DIR

from . import Tracker


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """torch's SummaryWriter: scalars, histograms, the config as text and as HParams.

    A resumed run appends to the same folder; events at or after the epoch it resumes from are
    purged (the writer's purge_step), so TensorBoard shows each epoch once.
    """

    name = "tensorboard"
    state_key = "tracker-tensorboard"
    requires = ("tensorboard", "torch.utils.tensorboard")  # torch's writer needs the package
    extra = "tensorboard"
    subfolder = TENSORBOARD_DIR

    def __init__(self, **runtime: Any) -> None:
        super().__init__(**runtime)
        self._tb = self.check_installed()[-1]
        self._purge_step: int | None = None
        self.writer: Any = None

    def check_destination(self) -> None:
        self._check_folder(self.folder)

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
        if self.writer is not None:
            self.writer.flush()

    def _finish(self, status: str) -> None:
        if self.writer is not None:  # None: its start failed (that error is the one shown)
            self.writer.close()
