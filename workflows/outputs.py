"""The files of a run folder (DESIGN.md, "Outputs of a run"), written as the run goes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from flexsample.engine.loop import Callback, QueryResult, StepRecord
from flexsample.engine.pool import Pool

ROUNDS = "rounds.jsonl"
SELECTION = "selection.npz"
SCORES = "scores.npz"
RESULTS = "results.json"
CONFIG = "config.json"
CURVES = "curves.png"
CALIBRATION = "calibration.png"  # the test reliability diagram (best-validation checkpoint)
# experiment trackers' default folders inside a run folder (`--log-to` without `--log-dir`)
TENSORBOARD_DIR, CSV_LOG_DIR, WANDB_DIR = "tensorboard", "logs", "wandb"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def _write_atomic(path: Path, write: Callable[[BinaryIO], object], suffix: str = "") -> None:
    """Write through a temporary file beside `path`, then rename it into place."""
    from flexsample.engine.checkpoint import temp_beside  # torch: imported when writing

    fd, tmp = temp_beside(path, suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write, honouring the umask."""
    text = json.dumps(obj, indent=2, default=_jsonable) + "\n"
    _write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_figure(path: Path, fig: Any) -> None:
    """Atomic PNG write of a matplotlib figure, honouring the umask (a reader such as
    `flexsample eval` rewriting calibration.png never leaves half a picture)."""
    _write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110), ".png")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic .npz write, honouring the umask."""
    _write_atomic(path, lambda fh: np.savez(fh, **arrays), ".npz")


class RunRecorder(Callback):
    """Appends rounds.jsonl per closed step; rewrites selection.npz and scores.npz per query.

    Its score log travels in every checkpoint (`state_key`), so a resume rewrites all three
    files from the checkpoint it continues: a kill between a query and the next checkpoint
    cannot duplicate a step's scores, and a deleted or corrupt scores.npz loses nothing.
    """

    state_key = "run_recorder"

    def __init__(self, out: Path, pool: Pool, train_ids: list[str], save_scores: bool = True):
        self.out = out
        self.pool = pool
        self.train_ids = np.asarray(train_ids)
        self.save_scores = save_scores
        self._scores: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.restored = False

    def state_dict(self) -> dict[str, Any]:
        """The score log as tensors and ints (loadable with torch.load(weights_only=True))."""
        import torch

        return {
            "scores": [
                {
                    "step": int(s),
                    "index": torch.from_numpy(np.ascontiguousarray(i, dtype=np.int64)),
                    "score": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)),
                }
                for s, i, v in self._scores
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scores = [
            (int(e["step"]), _array(e["index"], np.int64), _array(e["score"], np.float64))
            for e in state.get("scores", [])
        ]
        self.restored = True

    def restore(self, records: list[StepRecord], step: int) -> None:
        """After a resume: rewrite rounds.jsonl, selection.npz, scores.npz from the checkpoint.

        `step` is the checkpoint's query step; a checkpoint without a score log (written before
        runs kept one) takes the steps up to it from a readable scores.npz.
        """
        if not self.restored:
            self._scores = [e for e in _read_scores(self.out / SCORES) if e[0] <= step]
        with open(self.out / ROUNDS, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r.to_json()) + "\n")
        self.write_selection()
        self.write_scores()

    def on_query(self, result: QueryResult) -> None:
        if self.save_scores and len(result.candidates):
            self._scores.append((result.step, result.candidates, result.scores))
            self.write_scores()
        self.write_selection()

    def on_step_end(self, record: StepRecord) -> None:
        with open(self.out / ROUNDS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")

    def write_selection(self, folder: Path | None = None) -> None:
        index, step = self.pool.history()
        save_npz(
            (folder or self.out) / SELECTION,
            index=index,
            step=step,
            train_ids=self.train_ids[index],
        )

    def write_scores(self, folder: Path | None = None) -> None:
        if not self.save_scores:
            return
        path = (folder or self.out) / SCORES
        if not self._scores:
            empty = np.zeros(0, np.int64)
            save_npz(path, step=empty, index=empty, score=np.zeros(0))
            return
        save_npz(
            path,
            step=np.concatenate([np.full(len(i), s, np.int64) for s, i, _ in self._scores]),
            index=np.concatenate([i for _, i, _ in self._scores]),
            score=np.concatenate([v for _, _, v in self._scores]),
        )


def _array(value: Any, dtype: type) -> np.ndarray:
    """A tensor, array or list from a checkpoint as a NumPy array."""
    if hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _read_scores(path: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The steps of a scores.npz; nothing when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            step, index, score = z["step"], z["index"], z["score"]
    except (OSError, ValueError, KeyError, EOFError):
        return []
    return [(int(s), index[step == s], score[step == s]) for s in np.unique(step)]
