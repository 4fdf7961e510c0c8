"""The files of a run folder (DESIGN.md, "Outputs of a run"), written as the run goes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.loop import Callback, QueryResult, StepRecord
from flexsample.engine.pool import Pool

ROUNDS = "rounds.jsonl"
SELECTION = "selection.npz"
SCORES = "scores.npz"
RESULTS = "results.json"
CONFIG = "config.json"
CURVES = "curves.png"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=_jsonable)
        fh.write("\n")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


class RunRecorder(Callback):
    """Appends rounds.jsonl per closed step; rewrites selection.npz and scores.npz per query."""

    def __init__(self, out: Path, pool: Pool, train_ids: list[str], save_scores: bool = True):
        self.out = out
        self.pool = pool
        self.train_ids = np.asarray(train_ids)
        self.save_scores = save_scores
        self._scores: list[tuple[int, np.ndarray, np.ndarray]] = []

    def restore(self, records: list[StepRecord]) -> None:
        """After a resume: rounds.jsonl holds exactly the records closed so far."""
        with open(self.out / ROUNDS, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r.to_json()) + "\n")
        if (self.out / SCORES).exists():
            with np.load(self.out / SCORES) as z:
                for s in np.unique(z["step"]):
                    m = z["step"] == s
                    self._scores.append((int(s), z["index"][m], z["score"][m]))

    def on_query(self, result: QueryResult) -> None:
        if self.save_scores and len(result.candidates):
            self._scores.append((result.step, result.candidates, result.scores))
            self.write_scores()
        self.write_selection()

    def on_step_end(self, record: StepRecord) -> None:
        with open(self.out / ROUNDS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")

    def write_selection(self) -> None:
        index, step = self.pool.history()
        save_npz(self.out / SELECTION, index=index, step=step, train_ids=self.train_ids[index])

    def write_scores(self) -> None:
        if not self.save_scores:
            return
        if not self._scores:
            empty = np.zeros(0, np.int64)
            save_npz(self.out / SCORES, step=empty, index=empty, score=np.zeros(0))
            return
        save_npz(
            self.out / SCORES,
            step=np.concatenate([np.full(len(i), s, np.int64) for s, i, _ in self._scores]),
            index=np.concatenate([i for _, i, _ in self._scores]),
            score=np.concatenate([v for _, _, v in self._scores]),
        )
