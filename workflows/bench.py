"""A bench grid: cells (estimators x policies x datasets x ratios x seeds, plus named
long-tail baselines), run in this process or in worker processes, summarised as bench.csv,
summary.md and summary.png.

What makes the numbers trustworthy:

- every cell is keyed on a hash of its resolved configuration (`RunConfig.model_dump()`, sorted
  JSON) and the flexsample version; the hash is part of the cell's folder name, so a request with
  other flags (or another flexsample version) never reuses, nor overwrites, a cell of another
  configuration: it runs into a folder of its own;
- a cell is finished only once its `cell.json` says so, with that hash; it is written last, after
  `results.json`, so a cell killed or failed half-way is rerun, never reported;
- bench.csv and the summary cover every finished cell under --out (this grid's and those earlier
  grids left there), with the flags that tell two configurations of one method apart as columns;
- worker processes die with the bench process, and Ctrl-C stops the grid at once.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from flexsample._version import __version__
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.faults import fault_point

from .config import RunConfig, stable_hash, validate_config
from .outputs import RESULTS, ROUNDS, write_json

BASELINES: dict[str, dict[str, Any]] = {
    "ce": {"loss": "ce"},
    "rs": {"sampler": "class-balanced"},
    "rw": {"loss": "grw", "grw_exponent": 1.0},
    "cb-focal": {"loss": "cb-focal"},
    "ldam-drw": {"loss": "ldam"},
    "balanced-softmax": {"loss": "balanced-softmax"},
    "logit-adjust": {"logit_adjust": 1.0},
    "mixup": {"mixup": 1.0},
}
BASELINE_BASE = {
    "policy": "full",
    "estimator": "random",
    "anchors": "random",
    "allocation": "proportional",
    "loss": "ce",
    "sampler": "instance",
    "mixup": 0.0,
    "logit_adjust": 0.0,
}

CELL_FILE = "cell.json"  # written last: a cell is finished once it says so
CELL_FORMAT = 1
HASH_CHARS = 10  # of the config hash in a cell's folder name

# the CSV's fixed columns; the flags that vary between cells of one method come after `seed`
META_COLUMNS = [
    "method",
    "dataset",
    "imbalance_ratio",
    "estimator",
    "policy",
    "allocation",
    "loss",
    "sampler",
    "mixup",
    "logit_adjust",
    "seed",
]
METRIC_COLUMNS = [
    "test_balanced_accuracy",
    "test_accuracy",
    "test_macro_f1",
    "head",
    "medium",
    "tail",
    "best_val_balanced_accuracy",
    "subset_size_at_best",
    "wall_s",
]
CSV_COLUMNS = [*META_COLUMNS, "config_hash", *METRIC_COLUMNS, "in_grid", "cell"]
# always shown (section or column) and never a reason to tell configurations apart
_NOT_FLAGS = ("dataset", "imbalance_ratio", "seed")
SUMMARY_KEYS = (
    "test_balanced_accuracy",
    "head",
    "medium",
    "tail",
    "best_val_balanced_accuracy",
)


def config_hash(config: RunConfig | dict[str, Any], version: str = __version__) -> str:
    """A cell's key: sha256 of its resolved configuration (sorted JSON) and flexsample version."""
    values = config.model_dump(mode="json") if isinstance(config, RunConfig) else config
    return stable_hash({"config": values, "flexsample_version": version})


@dataclass
class Cell:
    """One requested run of the grid; `key` is its config hash, also in its folder name."""

    method: str
    baseline: bool
    config: RunConfig
    out: Path
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = config_hash(self.config)

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.config.seed} ({self.out})"


@dataclass
class CellRecord:
    """A finished cell as stored in its folder: what ran, under which key, and its results."""

    method: str
    baseline: bool
    config: dict[str, Any]
    key: str
    version: str
    results: dict[str, Any]
    out: Path

    def flags(self) -> dict[str, Any]:
        return {**self.config, "flexsample_version": self.version}


def plan_cells(
    base: RunConfig,
    out: Path,
    estimators: list[str] | None,
    policies: list[str] | None,
    datasets: list[str] | None,
    ratios: list[float] | None,
    seeds: list[int] | None,
    baselines: list[str] | None,
) -> list[Cell]:
    """The requested cells, each in `<out>/<dataset>-r<ratio>/<method>/seed<N>-<hash>`."""
    unknown = [b for b in baselines or [] if b not in BASELINES]
    if unknown:
        raise FlexsampleError(f"unknown baseline '{unknown[0]}'; accepted: {', '.join(BASELINES)}")
    cells: list[Cell] = []

    def add(method: str, baseline: bool, cfg: RunConfig, folder: Path) -> None:
        key = config_hash(cfg)
        cell = Cell(method, baseline, cfg, folder / f"seed{cfg.seed}-{key[:HASH_CHARS]}", key)
        if all(c.out != cell.out for c in cells):  # a name given twice is one cell
            cells.append(cell)

    for ds in datasets or [base.dataset]:
        for ratio in ratios or [base.imbalance_ratio]:
            group = out / f"{ds}-r{ratio:g}"
            for seed in seeds or [base.seed]:
                common = {"dataset": ds, "imbalance_ratio": ratio, "seed": seed}
                if estimators is not None or policies is not None or not baselines:
                    for est in estimators or [base.estimator]:
                        for pol in policies or [base.policy]:
                            values = {**base.model_dump(), **common, "estimator": est}
                            cfg = validate_config({**values, "policy": pol}, "the bench grid")
                            method = f"{est}/{pol}"
                            add(method, False, cfg, group / method.replace("/", "-"))
                for name in baselines or []:
                    values = {**base.model_dump(), **BASELINE_BASE, **BASELINES[name], **common}
                    cfg = validate_config(values, "the bench grid")
                    add(f"baseline:{name}", True, cfg, group / f"baseline-{name}")
    return cells


# --- one cell --------------------------------------------------------------------------------


def run_cell(
    config: dict[str, Any],
    out: str,
    threads: int,
    method: str = "",
    baseline: bool = False,
) -> dict[str, Any]:
    """One cell in this process (or a worker process): returns results.json plus wall time.

    cell.json (config, its hash, version, wall time) is written last, once results.json is
    complete: a cell killed or failed before it is never taken for a result.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = validate_config(config, "the bench grid")
    path = Path(out)
    doc = {
        "format": CELL_FORMAT,
        "status": "finished",
        "method": method,
        "baseline": baseline,
        "config_hash": config_hash(cfg),
        "flexsample_version": __version__,
        "config": cfg.model_dump(mode="json"),
    }
    (path / CELL_FILE).unlink(missing_ok=True)  # a stale or damaged record of ours
    t0 = time.perf_counter()
    results = _run_into(cfg, path)
    fault_point("bench-cell")
    wall = time.perf_counter() - t0
    write_json(path / CELL_FILE, {**doc, "wall_s": wall, "pid": os.getpid()})
    return {**results, "wall_s": wall}


def _run_into(cfg: RunConfig, path: Path) -> dict[str, Any]:
    """The run itself, the one place the bench calls the run pipeline. A half cell left in
    `path` by a killed attempt is a flexsample run folder: --overwrite's rules replace it."""
    from .run import execute, prepare_out

    prepare_out(path, overwrite=True)
    return execute(cfg, path, overwrite=True).results


def read_cell(path: Path) -> CellRecord | None:
    """The finished cell stored in `path`, or None (not a cell, unfinished, edited, damaged)."""
    try:
        doc = json.loads((path / CELL_FILE).read_text(encoding="utf-8"))
        if doc.get("status") != "finished":
            return None
        config, version, key = doc["config"], doc["flexsample_version"], doc["config_hash"]
        if key != config_hash(config, version):
            return None  # edited after the run: it no longer says what ran
        results = json.loads((path / RESULTS).read_text(encoding="utf-8"))
        results["test"]["balanced_accuracy"]  # noqa: B018 - a results.json that has a result
        wall = float(doc.get("wall_s", math.nan))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    results["wall_s"] = wall
    method = str(doc.get("method") or f"{config.get('estimator')}/{config.get('policy')}")
    return CellRecord(method, bool(doc.get("baseline")), config, key, version, results, path)


def finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's results if it finished with exactly this configuration, else None."""
    record = read_cell(cell.out)
    return record.results if record is not None and record.key == cell.key else None


def collect_finished(out: Path) -> list[CellRecord]:
    """Every finished cell under `out`, whichever grid made it."""
    records = (read_cell(p.parent) for p in sorted(out.rglob(CELL_FILE)))
    return [r for r in records if r is not None]


def unkeyed_runs(out: Path) -> list[Path]:
    """Run folders under `out` with a results.json but no finished cell.json: never reported
    (an older flexsample's cells, or a cell that died before it was marked finished)."""
    return [p.parent for p in sorted(out.rglob(RESULTS)) if read_cell(p.parent) is None]


# --- worker processes ------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """Make this process exit when process `parent` dies, so no orphan keeps running cells.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Everywhere:
    a daemon thread exits the process once os.getppid() is no longer `parent`.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # died before the line above took effect
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent, interval), name="flexsample-watch-parent", daemon=True
    ).start()


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _worker_init(parent: int) -> None:
    """Process-pool initializer. Ctrl-C reaches the whole process group: the bench process
    decides what stops, so workers ignore SIGINT; SIGTERM keeps its default (exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now (their running cells stay unfinished, to be rerun)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(5)
            if p.is_alive():
                p.kill()


def _cell_args(cell: Cell, threads: int) -> tuple[Any, ...]:
    return (cell.config.model_dump(), str(cell.out), threads, cell.method, cell.baseline)


def _name_cell(cell: Cell, exc: BaseException) -> BaseException:
    """A cell's bad-input or file-system error as one line naming the cell (others unchanged)."""
    if isinstance(exc, FlexsampleError):
        return FlexsampleError(f"cell {cell.label}: {exc}")
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return FlexsampleError(f"cell {cell.label}: {cause}{where}; rerun to continue the grid")
    return exc


def run_grid(
    todo: list[Cell],
    jobs: int,
    on_start: Callable[[Cell], None] = lambda cell: None,
    on_done: Callable[[Cell], None] = lambda cell: None,
) -> None:
    """Run the cells, one at a time or in `jobs` spawned processes sharing the cores.

    A failing cell cancels the cells not yet handed to a worker; those running (or already
    queued to one) finish and are kept, then its error is raised. Ctrl-C (KeyboardInterrupt,
    SIGTERM too) or a dead worker stops every worker at once. Workers die with this process.
    """
    if jobs == 1:
        for cell in todo:
            on_start(cell)
            try:
                run_cell(*_cell_args(cell, 0))
            except (FlexsampleError, OSError) as exc:
                raise _name_cell(cell, exc) from exc
            on_done(cell)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(
        jobs,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    futures: dict[Future[dict[str, Any]], Cell] = {}
    error: BaseException | None = None
    try:
        for cell in todo:
            futures[pool.submit(run_cell, *_cell_args(cell, threads))] = cell
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                on_done(futures[fut])
                continue
            if isinstance(exc, BrokenProcessPool) or not isinstance(exc, Exception):
                raise exc
            if error is None:
                error = _name_cell(futures[fut], exc)
                for other in futures:
                    other.cancel()
    except BaseException:
        _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error


# --- bench.csv, summary.md, summary.png -------------------------------------------------------


def varying_flags(records: list[CellRecord]) -> list[str]:
    """The flags (config fields, and the flexsample version) whose values differ between cells
    of one method: what tells two configurations with the same method name apart."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r.flags())
    names = [*RunConfig.model_fields, "flexsample_version"]
    names += sorted({k for r in records for k in r.config} - set(names))
    varying = set()
    for flags in by_method.values():
        for name in names:
            if name in _NOT_FLAGS:
                continue
            if len({json.dumps(f.get(name), sort_keys=True) for f in flags}) > 1:
                varying.add(name)
    return [n for n in names if n in varying]


def csv_columns(flags: list[str]) -> list[str]:
    """CSV_COLUMNS with the varying flags that are not fixed columns after `seed`."""
    extra = [f for f in flags if f not in META_COLUMNS]
    i = CSV_COLUMNS.index("seed") + 1
    return [*CSV_COLUMNS[:i], *extra, *CSV_COLUMNS[i:]]


def csv_row(record: CellRecord, flags: list[str], in_grid: bool, root: Path) -> dict[str, Any]:
    """One CSV row; `_dir` (not a column) keeps the cell's folder for the plots."""
    c, res = record.flags(), record.results
    t = res["test"]
    g = t.get("group_recall") or {}
    row: dict[str, Any] = {
        "method": record.method,
        "dataset": c.get("dataset"),
        "imbalance_ratio": c.get("imbalance_ratio"),
        "estimator": "-" if record.baseline else c.get("estimator"),
        "policy": c.get("policy"),
        "allocation": "-" if record.baseline else c.get("allocation"),
        "loss": c.get("loss"),
        "sampler": c.get("sampler"),
        "mixup": c.get("mixup"),
        "logit_adjust": c.get("logit_adjust"),
        "seed": c.get("seed"),
    }
    for f in flags:
        row.setdefault(f, c.get(f))
    row.update(
        {
            "config_hash": record.key,
            "test_balanced_accuracy": t["balanced_accuracy"],
            "test_accuracy": t.get("accuracy"),
            "test_macro_f1": t.get("macro_f1"),
            "head": g.get("head"),
            "medium": g.get("medium"),
            "tail": g.get("tail"),
            "best_val_balanced_accuracy": res.get("best_val_balanced_accuracy"),
            "subset_size_at_best": res.get("subset_size_at_best"),
            "wall_s": res.get("wall_s"),
            "in_grid": "yes" if in_grid else "no",
            "cell": _relative(record.out, root),
            "_dir": record.out,
        }
    )
    return row


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] = CSV_COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, list):
        return ";".join(str(x) for x in v)
    return f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v)


def _show(v: Any) -> str:
    """A flag's value in a table or a label: 0.003, 2, a;b, -."""
    if v is None or v == []:
        return "-"
    if isinstance(v, list):
        return ";".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def summarise(rows: list[dict[str, Any]], flags: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Mean and std per (dataset, ratio, method, varying flags), ranked by mean test balanced
    accuracy. The std is None below two values: one seed has no spread to show."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = tuple(json.dumps(r.get(f), sort_keys=True) for f in flags)
        groups[(r["dataset"], r["imbalance_ratio"], r["method"], key)].append(r)
    out = []
    for (ds, ratio, method, _), rs in groups.items():
        entry: dict[str, Any] = {
            "dataset": ds,
            "imbalance_ratio": ratio,
            "method": method,
            "flags": {f: rs[0].get(f) for f in flags},
            "n": len(rs),
            "in_grid": any(r.get("in_grid", "yes") == "yes" for r in rs),
            "dirs": [r["_dir"] for r in rs if "_dir" in r],
        }
        for key in SUMMARY_KEYS:
            vals = np.array([r[key] for r in rs if r.get(key) is not None], dtype=np.float64)
            entry[key] = (
                float(vals.mean()) if len(vals) else float("nan"),
                float(vals.std(ddof=1)) if len(vals) > 1 else None,
            )
        out.append(entry)
    out.sort(
        key=lambda e: (
            e["dataset"],
            e["imbalance_ratio"],
            -e["test_balanced_accuracy"][0],
            label(e),
        )
    )
    return out


def label(entry: dict[str, Any]) -> str:
    """The method plus its varying flags: 'entropy/linear [rounds=2, lr=0.003]'."""
    flags = entry.get("flags") or {}
    if not flags:
        return str(entry["method"])
    return f"{entry['method']} [" + ", ".join(f"{k}={_show(v)}" for k, v in flags.items()) + "]"


def write_summary_md(
    path: Path,
    summary: list[dict[str, Any]],
    command: str,
    flags: list[str] | tuple[str, ...] = (),
) -> None:
    others = sum(not e["in_grid"] for e in summary)
    lines = ["# flexsample bench summary", "", f"Command: `{command}`", ""]
    lines += [
        "Every finished cell under this folder is listed (bench.csv has one row per cell). "
        "A configuration is a method plus every flag; cells are keyed on a hash of their "
        "resolved configuration and the flexsample version, so a configuration is never "
        "reported under another's name."
        + (
            " Flags that differ between configurations of one method: "
            + ", ".join(f"`{f}`" for f in flags)
            + "."
            if flags
            else ""
        ),
        "",
    ]
    if others:
        lines += [
            f"† {others} configuration{'s' if others > 1 else ''} not in this command's grid "
            "(left here by an earlier bench).",
            "",
        ]
    by_group: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in summary:
        by_group[(e["dataset"], e["imbalance_ratio"])].append(e)
    flag_head = "".join(f" {f} |" for f in flags)
    for (ds, ratio), entries in by_group.items():
        baselines = [e for e in entries if e["method"].startswith("baseline:")]
        best_base = (
            max(baselines, key=lambda e: e["test_balanced_accuracy"][0]) if baselines else None
        )
        lines += [
            f"## {ds}, r = {ratio:g}",
            "",
            "Ranked by mean test balanced accuracy (best-validation checkpoint); "
            "mean ± std over seeds (percent; a single seed shows its value alone). "
            "★ = strongest baseline.",
            "",
            f"| rank | method |{flag_head} seeds | test bal-acc | head | medium | tail "
            "| best val bal-acc |",
            "|---:|---|" + "---|" * len(flags) + "---:|---:|---:|---:|---:|---:|",
        ]
        for rank, e in enumerate(entries, 1):
            mark = (" ★" if e is best_base else "") + ("" if e["in_grid"] else " †")
            values = "".join(f" {_show(e['flags'].get(f))} |" for f in flags)
            cells = " | ".join(_pm(e[k]) for k in SUMMARY_KEYS)
            lines.append(f"| {rank} | {e['method']}{mark} |{values} {e['n']} | {cells} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pm(v: tuple[float, float | None]) -> str:
    m, s = v
    if np.isnan(m):
        return "-"
    return f"{100 * m:.1f}" if s is None else f"{100 * m:.1f} ± {100 * s:.1f}"


def error_bars(entries: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(bar index, std in percent) for the bars with a spread: a single seed gets none."""
    return [
        (i, 100 * e["test_balanced_accuracy"][1])
        for i, e in enumerate(entries)
        if e["test_balanced_accuracy"][1] is not None
    ]


def plot_summary(path: Path, summary: list[dict[str, Any]]) -> None:
    """Bars of test balanced accuracy per configuration (whiskers only over several seeds) and
    validation curves against subset size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(e["dataset"], e["imbalance_ratio"]) for e in summary})
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 2, figsize=(14, 4.8 * max(1, len(groups))), squeeze=False)
    for row, (ds, ratio) in enumerate(groups):
        entries = [e for e in summary if (e["dataset"], e["imbalance_ratio"]) == (ds, ratio)]
        ax = axes[row, 0]
        names = [label(e) + ("" if e["in_grid"] else " †") for e in entries]
        means = [100 * e["test_balanced_accuracy"][0] for e in entries]
        bars = error_bars(entries)
        colors = [
            "tab:gray" if e["method"].startswith("baseline:") else "tab:blue" for e in entries
        ]
        ax.barh(range(len(names)), means, color=colors)
        if bars:
            ax.errorbar(
                [means[i] for i, _ in bars],
                [i for i, _ in bars],
                xerr=[s for _, s in bars],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        spread = max([s for _, s in bars] + [0.0])
        finite = [m for m in means if not math.isnan(m)] or [0.0]
        ax.set_xlim(max(0.0, min(finite) - spread - 5), min(100.0, max(finite) + spread + 3))
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("test balanced accuracy (%)")
        if not bars:
            spread_note = "one seed each: no error bars"
        elif len(bars) < len(entries):
            spread_note = "mean ± std over seeds (no bar: one seed)"
        else:
            spread_note = "mean ± std over seeds"
        ax.set_title(f"{ds}, r={ratio:g}: {spread_note} (grey = baselines)")
        ax.grid(axis="x", alpha=0.3)
        ax2 = axes[row, 1]
        for e in entries:
            if e["method"].startswith("baseline:"):
                continue
            curves = [cv for cv in (_curve(d) for d in e["dirs"]) if cv]
            if not curves:
                continue
            n = min(len(cv) for cv in curves)
            size = np.mean([[p[0] for p in cv[:n]] for cv in curves], axis=0)
            acc = np.mean([[p[1] for p in cv[:n]] for cv in curves], axis=0)
            ax2.plot(size, 100 * acc, "o-", label=label(e))
        ax2.set_xlabel("subset size")
        ax2.set_ylabel("val balanced accuracy (%) at end of step")
        ax2.set_title("Validation balanced accuracy vs subset size (mean over seeds)")
        ax2.grid(alpha=0.3)
        if ax2.lines:
            ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / ROUNDS
    if not path.is_file():
        return []
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [(r["subset_size"], r["val_balanced_accuracy"]) for r in recs]


@dataclass
class SummaryInfo:
    """What write_summary covered: cells of this grid and finished cells of other grids."""

    grid_cells: int
    other_cells: int
    flags: list[str]


def write_summary(out: Path, cells: list[Cell], command: str) -> SummaryInfo:
    """bench.csv, summary.md and summary.png over every finished cell under `out`."""
    records = collect_finished(out)
    wanted = {(c.out.resolve(), c.key) for c in cells}
    flags = varying_flags(records)
    rows = [csv_row(r, flags, (r.out.resolve(), r.key) in wanted, out) for r in records]
    write_csv(out / "bench.csv", rows, csv_columns(flags))
    summary = summarise(rows, flags)
    write_summary_md(out / "summary.md", summary, command, flags)
    plot_summary(out / "summary.png", summary)
    grid = sum(r["in_grid"] == "yes" for r in rows)
    return SummaryInfo(grid, len(rows) - grid, flags)
