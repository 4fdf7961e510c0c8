"""Terminal output: progress during a run and the tables at its end (rich).

On a terminal, progress is drawn as live rich bars. Anywhere else (a cluster job log, `| tee`,
a file) live bars would print nothing until the end, so the same objects print plain,
time-stamped lines instead, flushed as they are written:

    [    0.0 s] loading ...
    [    2.1 s] loading: done in 2.1 s
    [   14.0 s] epoch 1/10  subset 105  loss 1.2345  val bal-acc 0.4100 *  (3.2 s)
    [   14.1 s] step 1: scoring 450 candidates
    [   16.0 s] step 1: scored 450 candidates in 1.9 s, added 120
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from flexsample.cli import raise_pending_interrupt
from flexsample.engine.loop import Callback, QueryResult, StepRecord
from flexsample.workflows.progress import Reporter

FINE_TOTAL = 20  # tasks counting at most this many units (epochs, cells) get a line per unit
QUIET_GAP_S = 10.0  # inside a scoring pass, a plain line at most this often (every 10 %)


def is_plain(console: Console) -> bool:
    """Whether `console` writes somewhere live bars cannot be drawn (a file, a pipe)."""
    return not console.is_terminal


class PlainLog:
    """Plain lines stamped with the seconds since `start`, flushed at once (for job logs)."""

    def __init__(self, console: Console, start: float | None = None) -> None:
        self.console = console
        self.start = time.perf_counter() if start is None else start

    def line(self, text: str) -> None:
        elapsed = time.perf_counter() - self.start
        self.console.print(
            f"[{elapsed:7.1f} s] {text}", markup=False, highlight=False, soft_wrap=True
        )
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.console.file.flush()


class PlainProgress(Progress):
    """`Progress` with no live display: plain lines for a job log instead of bars.

    A task prints a line when its `info` field changes, when it passes another tenth of its
    total (every unit when the total is at most `FINE_TOTAL`) and when it completes; adding a
    task prints nothing. The label is the bars' own (e.g. "cell {task.completed}/{task.total}").
    """

    def __init__(self, console: Console, label: str, start: float | None = None) -> None:
        super().__init__(TextColumn(label), console=console, disable=True)
        self.label = label
        self.log = PlainLog(console, start)
        self._shown: dict[TaskID, tuple[int, str]] = {}
        self._plain_lock = threading.Lock()

    @staticmethod
    def _mark(completed: float, total: float | None) -> int:
        if total is None or total <= FINE_TOTAL:
            return int(completed)
        return int(10 * completed // total) if completed < total else 10

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        task = self._tasks[task_id]
        self._shown[task_id] = (
            self._mark(task.completed, task.total),
            str(task.fields.get("info", "")),
        )
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: TaskID) -> None:
        with self._plain_lock:
            task = self._tasks[task_id]
            shown = (self._mark(task.completed, task.total), str(task.fields.get("info", "")))
            if shown == self._shown.get(task_id):
                return
            self._shown[task_id] = shown
            label = Text.from_markup(self.label.format(task=task)).plain
            self.log.line("  ".join(part for part in (label, shown[1]) if part))


def progress_bars(
    console: Console, label: str = "{task.description}", start: float | None = None
) -> Progress:
    """Bars with a count, a free `info` field, elapsed time and ETA (runs and benches).

    When `console` is not a terminal this is a `PlainProgress`: the same calls
    (`add_task`, `update`, `advance`, `with`) print plain per-change lines instead of bars.
    """
    if is_plain(console):
        return PlainProgress(console, label, start)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class ConsoleReporter(Reporter):
    """A workflow `Reporter` for the CLI: rich status and bars on a terminal, lines otherwise.

    Phases print a start line and "NAME: done in X s" (or "stopped after X s") in a job log;
    counted tasks print a start line, then every tenth and the end. `start` (a
    `time.perf_counter()` value) lets the reporter and the `ProgressDisplay` share one clock.
    """

    def __init__(self, console: Console, start: float | None = None) -> None:
        self.console = console
        self.log = PlainLog(console, start)

    @property
    def plain(self) -> bool:
        return is_plain(self.console)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        raise_pending_interrupt()  # one a C extension swallowed: raised where it can propagate
        t0 = time.perf_counter()
        if self.plain:
            self.log.line(f"{name} ...")
            try:
                yield
            except BaseException:
                self.log.line(f"{name}: stopped after {time.perf_counter() - t0:.1f} s")
                raise
            self.log.line(f"{name}: done in {time.perf_counter() - t0:.1f} s")
            return
        with self.console.status(f"{name} ..."):
            yield
        self.console.print(
            f"[green]done[/green] {name} [dim]({time.perf_counter() - t0:.1f} s)[/dim]",
            highlight=False,
        )

    @contextlib.contextmanager
    def task(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.plain:
            self.log.line(f"{name}: 0/{total}")
            bars: Progress = PlainProgress(
                self.console, "{task.description}: {task.completed}/{task.total}", self.log.start
            )
        else:
            bars = progress_bars(self.console)
        with bars:
            task_id = bars.add_task(name, total=total, info="")

            def advance(n: int = 1) -> None:
                bars.advance(task_id, n)

            yield advance

    def message(self, text: str) -> None:
        if self.plain:
            self.log.line(text)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


class ProgressDisplay(Callback):
    """A training bar over the epoch budget and a scoring bar per query (on a terminal).

    Elsewhere, plain lines: one per epoch (epoch i/N, subset size, loss, validation balanced
    accuracy, seconds) and one at the start and end of each scoring pass, so a job log shows
    the run moving.
    """

    def __init__(self, console: Console, epoch_budget: int, start: float | None = None) -> None:
        self.plain = is_plain(console)
        self.log = PlainLog(console, start)
        self.epoch_budget = epoch_budget
        self.score_task: Any = None
        self._epoch_t0 = time.perf_counter()
        self._subset_size: int | None = None
        self._scoring: dict[str, Any] | None = None
        if not self.plain:
            self.progress = progress_bars(console)
            self.train_task = self.progress.add_task("train", total=epoch_budget, info="")

    def __enter__(self) -> ProgressDisplay:
        if not self.plain:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.plain:
            self.progress.stop()

    def on_scoring_start(self, step: int, total: int) -> None:
        if self.plain:
            now = time.perf_counter()
            self._scoring = {"step": step, "total": total, "done": 0, "t0": now, "said": now}
            self.log.line(f"step {step}: scoring {total} candidates")
            return
        self.score_task = self.progress.add_task(f"score step {step}", total=total, info="")

    def on_scoring_advance(self, n: int) -> None:
        if self.plain:
            sc = self._scoring
            if sc is None:
                return
            before, sc["done"] = sc["done"], sc["done"] + n
            now = time.perf_counter()
            tenth = max(1, sc["total"]) / 10
            if int(sc["done"] // tenth) > int(before // tenth) and now - sc["said"] >= QUIET_GAP_S:
                sc["said"] = now
                self.log.line(
                    f"step {sc['step']}: scored {min(sc['done'], sc['total'])}/{sc['total']} "
                    f"({now - sc['t0']:.1f} s)"
                )
            return
        if self.score_task is not None:
            self.progress.advance(self.score_task, n)

    def on_query(self, result: QueryResult) -> None:
        if not self.plain:
            return
        sc, self._scoring = self._scoring, None
        added = len(result.chosen)
        if sc is not None and sc["step"] == result.step:
            self.log.line(
                f"step {result.step}: scored {len(result.candidates)} candidates in "
                f"{result.seconds:.1f} s, added {added}"
            )
        else:
            self.log.line(f"step {result.step}: added {added} (no scoring needed)")

    def on_epoch_start(self, epoch: int, subset_size: int) -> None:
        self._epoch_t0 = time.perf_counter()
        self._subset_size = subset_size

    def on_epoch_end(self, epoch: int, loss: float, val: Any, improved: bool) -> None:
        star = " *" if improved else ""
        if self.plain:
            subset = "" if self._subset_size is None else f"  subset {self._subset_size}"
            self.log.line(
                f"epoch {epoch + 1}/{self.epoch_budget}{subset}  loss {loss:.4f}  "
                f"val bal-acc {val.balanced_accuracy:.4f}{star}  "
                f"({time.perf_counter() - self._epoch_t0:.1f} s)"
            )
            return
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


PER_CLASS = "sens / spec / AUC"
PER_CLASS_KEY = (
    "per class: sens = sensitivity (the class's recall), spec = specificity, "
    "AUC = one-vs-rest ROC AUC"
)


BEST_COLUMN, LAST_COLUMN = "best-val checkpoint", "last weights"


def result_columns(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The final table's columns from results.json, each named for the model it evaluates.

    A plain run: the best-validation checkpoint and the last weights. With `--decouple`, the
    top-level `test` is the decoupled classifier's (stage 2, on the best-validation
    checkpoint's backbone) and `test_last` the curriculum's last weights, which were never
    decoupled; the best-validation checkpoint before decoupling (stage 1) comes between them.
    """
    stage = results.get("decouple") or {}
    if not stage:
        return {BEST_COLUMN: results["test"], LAST_COLUMN: results["test_last"]}
    method = stage.get("method") or "decoupled"
    columns = {f"decoupled classifier ({method}) on the best-val checkpoint": results["test"]}
    stage1 = (stage.get("stage1") or {}).get("test")
    if stage1:
        columns[f"{BEST_COLUMN}, before decoupling"] = stage1
    columns[f"{LAST_COLUMN} (not decoupled)"] = results["test_last"]
    return columns


def metrics_table(columns: dict[str, dict[str, Any]], class_names: list[str]) -> Table:
    """Summary metrics side by side (e.g. best-val checkpoint vs last weights: `result_columns`
    names them for a run, the decoupled classifier included).

    Summary rows (balanced accuracy, accuracy, macro F1, macro one-vs-rest AUC, ECE, group
    recall), then one row per class with sensitivity (its recall) / specificity / AUC; the
    caption carries the notes that explain values (accuracy equal to balanced accuracy on a
    class-balanced split, classes without an AUC).
    """
    from flexsample.training.metrics import metric_notes

    metrics = list(columns.values())
    table = Table(title="Test metrics", title_justify="left", caption_justify="left")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    bins = next((m["calibration"]["n_bins"] for m in metrics if "calibration" in m), None)
    summary = [
        ("balanced_accuracy", "balanced_accuracy"),
        ("accuracy", "accuracy"),
        ("macro_f1", "macro_f1"),
        ("macro AUC (one-vs-rest)", "macro_auc"),
        ("ECE" if bins is None else f"ECE ({bins} bins)", "ece"),
    ]
    rows: list[tuple[str, list[Any]]] = [
        (label, [m.get(key) for m in metrics]) for label, key in summary
    ]
    for g in ("head", "medium", "tail"):
        rows.append((f"{g} recall", [(m.get("group_recall") or {}).get(g) for m in metrics]))
    for name, values in rows:
        table.add_row(name, *(_number(v) for v in values))
    table.add_section()
    table.add_row(Text("per class", style="dim"), *(Text(PER_CLASS, style="dim") for _ in metrics))
    for c, cname in enumerate(class_names):
        table.add_row(cname, *(_per_class(m, c) for m in metrics))
    notes = _column_notes(
        {name: metric_notes(m, class_names) for name, m in columns.items() if "ece" in m}
    )
    table.caption = "\n".join([PER_CLASS_KEY, *notes])
    return table


def _number(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _per_class(m: dict[str, Any], c: int) -> str:
    """ "sens / spec / AUC" of class `c` ("-" where undefined), recall alone in older reports."""
    sens = m.get("per_class_sensitivity", m["per_class_recall"])[c]
    if "per_class_specificity" not in m:
        return _number(sens)
    parts = (sens, m["per_class_specificity"][c], (m.get("per_class_auc") or [None] * (c + 1))[c])
    return " / ".join("-" if v is None else f"{v:.3f}" for v in parts)


def _column_notes(notes: dict[str, list[str]]) -> list[str]:
    """Each column's notes, once when every column has it, else prefixed with the column."""
    out: list[str] = []
    for name, lines in notes.items():
        for line in lines:
            if all(line in other for other in notes.values()):
                if line not in out:
                    out.append(line)
            else:
                out.append(f"{name}: {line}")
    return out
