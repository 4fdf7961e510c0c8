"""A bench grid: cells (estimators x policies x datasets x ratios x seeds, plus named
long-tail baselines), run in this process or in worker processes, summarised as bench.csv,
summary.md and summary.png."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.errors import FlexsampleError

from .config import RunConfig

# named baseline recipes: every one trains on the full long-tailed set from the start
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

CSV_COLUMNS = [
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


@dataclass
class Cell:
    method: str
    baseline: bool
    config: RunConfig
    out: Path


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
    unknown = [b for b in baselines or [] if b not in BASELINES]
    if unknown:
        raise FlexsampleError(f"unknown baseline '{unknown[0]}'; accepted: {', '.join(BASELINES)}")
    cells: list[Cell] = []
    for ds in datasets or [base.dataset]:
        for ratio in ratios or [base.imbalance_ratio]:
            group = out / f"{ds}-r{ratio:g}"
            for seed in seeds or [base.seed]:
                common = {"dataset": ds, "imbalance_ratio": ratio, "seed": seed}
                if estimators is not None or policies is not None or not baselines:
                    for est in estimators or [base.estimator]:
                        for pol in policies or [base.policy]:
                            cfg = base.model_copy(
                                update={**common, "estimator": est, "policy": pol}
                            )
                            method = f"{est}/{pol}"
                            cells.append(
                                Cell(
                                    method,
                                    False,
                                    RunConfig.model_validate(cfg.model_dump()),
                                    group / method.replace("/", "-") / f"seed{seed}",
                                )
                            )
                for name in baselines or []:
                    values = {**base.model_dump(), **BASELINE_BASE, **BASELINES[name], **common}
                    cfg = RunConfig.model_validate(values)
                    cells.append(
                        Cell(
                            f"baseline:{name}",
                            True,
                            cfg,
                            group / f"baseline-{name}" / f"seed{seed}",
                        )
                    )
    return cells


def run_cell(config: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    """One cell in this process (or a worker process): returns results.json plus wall time."""
    import torch

    from .run import execute, prepare_out

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = RunConfig.model_validate(config)
    path = Path(out)
    prepare_out(path, overwrite=True)
    t0 = time.perf_counter()
    results = execute(cfg, path).results
    results["wall_s"] = time.perf_counter() - t0
    (path / "wall_s.txt").write_text(f"{results['wall_s']:.3f}\n")
    return results


def finished(cell: Cell) -> dict[str, Any] | None:
    res = cell.out / "results.json"
    if not res.is_file():
        return None
    results = json.loads(res.read_text())
    wall = cell.out / "wall_s.txt"
    results["wall_s"] = float(wall.read_text()) if wall.is_file() else float("nan")
    return results


def csv_row(cell: Cell, results: dict[str, Any]) -> dict[str, Any]:
    c, t = cell.config, results["test"]
    g = t.get("group_recall") or {}
    return {
        "method": cell.method,
        "dataset": c.dataset,
        "imbalance_ratio": c.imbalance_ratio,
        "estimator": "-" if cell.baseline else c.estimator,
        "policy": c.policy,
        "allocation": "-" if cell.baseline else c.allocation,
        "loss": c.loss,
        "sampler": c.sampler,
        "mixup": c.mixup,
        "logit_adjust": c.logit_adjust,
        "seed": c.seed,
        "test_balanced_accuracy": t["balanced_accuracy"],
        "test_accuracy": t["accuracy"],
        "test_macro_f1": t["macro_f1"],
        "head": g.get("head"),
        "medium": g.get("medium"),
        "tail": g.get("tail"),
        "best_val_balanced_accuracy": results["best_val_balanced_accuracy"],
        "subset_size_at_best": results["subset_size_at_best"],
        "wall_s": results["wall_s"],
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    return f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std per (dataset, ratio, method), ranked by mean test balanced accuracy."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["imbalance_ratio"], r["method"])].append(r)
    out = []
    for (ds, ratio, method), rs in groups.items():
        entry = {"dataset": ds, "imbalance_ratio": ratio, "method": method, "n": len(rs)}
        for key in (
            "test_balanced_accuracy",
            "head",
            "medium",
            "tail",
            "best_val_balanced_accuracy",
        ):
            vals = np.array([r[key] for r in rs if r[key] is not None], dtype=np.float64)
            entry[key] = (
                (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
                if len(vals)
                else (float("nan"), 0.0)
            )
        out.append(entry)
    out.sort(key=lambda e: (e["dataset"], e["imbalance_ratio"], -e["test_balanced_accuracy"][0]))
    return out


def write_summary_md(path: Path, summary: list[dict[str, Any]], command: str) -> None:
    lines = ["# flexsample bench summary", "", f"Command: `{command}`", ""]
    by_group: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in summary:
        by_group[(e["dataset"], e["imbalance_ratio"])].append(e)
    for (ds, ratio), entries in by_group.items():
        baselines = [e for e in entries if e["method"].startswith("baseline:")]
        best_base = (
            max(baselines, key=lambda e: e["test_balanced_accuracy"][0]) if baselines else None
        )
        lines += [
            f"## {ds}, r = {ratio:g}",
            "",
            "Ranked by mean test balanced accuracy (best-validation checkpoint); "
            "mean ± std over seeds (percent). ★ = strongest baseline.",
            "",
            "| rank | method | seeds | test bal-acc | head | medium | tail | best val bal-acc |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for rank, e in enumerate(entries, 1):
            star = " ★" if e is best_base else ""
            cells = [
                _pm(e[k])
                for k in (
                    "test_balanced_accuracy",
                    "head",
                    "medium",
                    "tail",
                    "best_val_balanced_accuracy",
                )
            ]
            lines.append(f"| {rank} | {e['method']}{star} | {e['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pm(v: tuple[float, float]) -> str:
    m, s = v
    return "-" if np.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


def plot_summary(path: Path, summary: list[dict[str, Any]], cells: list[Cell]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(e["dataset"], e["imbalance_ratio"]) for e in summary})
    fig, axes = plt.subplots(len(groups), 2, figsize=(14, 4.8 * len(groups)), squeeze=False)
    for row, (ds, ratio) in enumerate(groups):
        entries = [e for e in summary if (e["dataset"], e["imbalance_ratio"]) == (ds, ratio)]
        ax = axes[row, 0]
        names = [e["method"] for e in entries]
        means = [100 * e["test_balanced_accuracy"][0] for e in entries]
        stds = [100 * e["test_balanced_accuracy"][1] for e in entries]
        colors = ["tab:gray" if n.startswith("baseline:") else "tab:blue" for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color=colors, capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        lo = max(0.0, min(means) - max(stds + [0]) - 5)
        ax.set_xlim(lo, min(100.0, max(means) + max(stds + [0]) + 3))
        ax.set_xlabel("test balanced accuracy (%)")
        ax.set_title(f"{ds}, r={ratio:g}: mean ± std over seeds (grey = baselines)")
        ax.grid(axis="x", alpha=0.3)
        ax2 = axes[row, 1]
        for method in names:
            if method.startswith("baseline:"):
                continue
            curves = [
                _curve(c.out)
                for c in cells
                if c.method == method
                and (c.config.dataset, c.config.imbalance_ratio) == (ds, ratio)
            ]
            curves = [cv for cv in curves if cv]
            if not curves:
                continue
            n = min(len(cv) for cv in curves)
            size = np.mean([[p[0] for p in cv[:n]] for cv in curves], axis=0)
            acc = np.mean([[p[1] for p in cv[:n]] for cv in curves], axis=0)
            ax2.plot(size, 100 * acc, "o-", label=method)
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
    path = run_dir / "rounds.jsonl"
    if not path.is_file():
        return []
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [(r["subset_size"], r["val_balanced_accuracy"]) for r in recs]


def run_grid(
    todo: list[Cell],
    jobs: int,
    on_start: Callable[[Cell], None] = lambda cell: None,
    on_done: Callable[[Cell], None] = lambda cell: None,
) -> None:
    """Run the cells, one at a time or in `jobs` spawned processes sharing the cores."""
    if jobs == 1:
        for cell in todo:
            on_start(cell)
            run_cell(cell.config.model_dump(), str(cell.out), 0)
            on_done(cell)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(run_cell, c.config.model_dump(), str(c.out), threads): c for c in todo
        }
        for fut in as_completed(futures):
            fut.result()
            on_done(futures[fut])


def write_summary(out: Path, cells: list[Cell], command: str) -> None:
    """bench.csv, summary.md and summary.png over the finished cells."""
    rows = [csv_row(c, finished(c)) for c in cells]
    write_csv(out / "bench.csv", rows)
    summary = summarise(rows)
    write_summary_md(out / "summary.md", summary, command)
    plot_summary(out / "summary.png", summary, cells)
