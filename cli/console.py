"""Terminal output: progress bars during a run and the tables at its end (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from flexsample.engine.loop import Callback, StepRecord


def progress_bars(console: Console, label: str = "{task.description}") -> Progress:
    """Bars with a count, a free `info` field, elapsed time and ETA (runs and benches)."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class ProgressDisplay(Callback):
    """A training bar over the epoch budget and a scoring bar per query."""

    def __init__(self, console: Console, epoch_budget: int) -> None:
        self.progress = progress_bars(console)
        self.train_task = self.progress.add_task("train", total=epoch_budget, info="")
        self.score_task: Any = None

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_scoring_start(self, step: int, total: int) -> None:
        self.score_task = self.progress.add_task(f"score step {step}", total=total, info="")

    def on_scoring_advance(self, n: int) -> None:
        if self.score_task is not None:
            self.progress.advance(self.score_task, n)

    def on_epoch_end(self, epoch: int, loss: float, val: Any, improved: bool) -> None:
        star = " *" if improved else ""
        self.progress.update(
            self.train_task,
            advance=1,
            info=f"loss {loss:.3f}  val bal-acc {val.balanced_accuracy:.3f}{star}",
        )


def rounds_table(records: list[StepRecord], class_names: list[str]) -> Table:
    table = Table(title="Rounds", title_justify="left")
    for col in ("step", "epoch", "subset", "per-class counts", "val bal-acc", "score s", "train s"):
        table.add_column(col, justify="right" if col != "per-class counts" else "left")
    for r in records:
        table.add_row(
            str(r.step),
            str(r.epoch),
            str(r.subset_size),
            " ".join(str(c) for c in r.class_counts),
            "-" if r.val_balanced_accuracy is None else f"{r.val_balanced_accuracy:.4f}",
            f"{r.score_s:.2f}",
            f"{r.train_s:.2f}",
        )
    return table


def metrics_table(columns: dict[str, dict[str, Any]], class_names: list[str]) -> Table:
    """Summary metrics side by side (e.g. best-val checkpoint vs last weights)."""
    table = Table(title="Test metrics", title_justify="left")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    rows: list[tuple[str, list[Any]]] = [
        (k, [m.get(k) for m in columns.values()])
        for k in ("balanced_accuracy", "accuracy", "macro_f1")
    ]
    for g in ("head", "medium", "tail"):
        rows.append(
            (f"{g} recall", [(m.get("group_recall") or {}).get(g) for m in columns.values()])
        )
    for c, cname in enumerate(class_names):
        rows.append((f"recall {cname}", [m["per_class_recall"][c] for m in columns.values()]))
    for name, values in rows:
        table.add_row(name, *("-" if v is None else f"{v:.4f}" for v in values))
    return table
