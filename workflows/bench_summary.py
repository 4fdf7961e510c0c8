"""bench.csv, summary.md and summary.png over every cell under a bench folder: the finished ones
(with paired statistics against the strongest baseline, `bench_stats`) and the failed ones
(listed with their error, never in a mean or a test)."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bench_stats
from .bench import Cell, CellRecord, FailedRecord, collect_cells, collect_failed
from .components import flat_view, is_old_layout, migrate
from .config import RunConfig
from .outputs import RESULTS, ROUNDS, SCORES

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
    "decouple",
    "budget",
    "seed",
]
# from results.json `compute` (what a run cost); empty for cells run before it was recorded
COMPUTE_COLUMNS = ["train_samples", "score_samples", "pretrain_samples", "train_s", "score_s"]
STAGE1_KEY = "stage1_test_balanced_accuracy"  # a decoupled cell's model before stage 2
METRIC_COLUMNS = [
    "test_balanced_accuracy",
    STAGE1_KEY,
    "test_accuracy",
    "test_macro_f1",
    "test_macro_auc",
    "test_ece",
    "head",
    "medium",
    "tail",
    "best_val_balanced_accuracy",
    "subset_size_at_best",
    "scored_queries",  # queries whose estimator scored candidates (0: it never ran)
    "wall_s",
    *COMPUTE_COLUMNS,
]
# status: finished | failed; a failed cell has empty metrics and its one-line error
CSV_COLUMNS = [*META_COLUMNS, "config_hash", "status", *METRIC_COLUMNS, "error", "in_grid", "cell"]
FINISHED, FAILED = "finished", "failed"
# always shown (section or column) and never a reason to tell configurations apart
_NOT_FLAGS = ("dataset", "imbalance_ratio", "budget", "seed")
DEFAULT_BUDGET = "epochs"  # of cells run before --budget existed
SUMMARY_KEYS = (
    "test_balanced_accuracy",
    "head",
    "medium",
    "tail",
    "best_val_balanced_accuracy",
    STAGE1_KEY,
)
STAT_KEY = "test_balanced_accuracy"  # the metric the paired statistics compare
ERROR_CHARS = 200  # of a failed cell's error in summary.md (bench.csv keeps it whole)


# --- bench.csv, summary.md, summary.png -------------------------------------------------------


def _flags(record: CellRecord | FailedRecord) -> dict[str, Any]:
    config = record.config if not is_old_layout(record.config) else migrate(record.config)
    return {**flat_view(config), "flexsample_version": record.version}


def varying_flags(records: Sequence[CellRecord | FailedRecord]) -> list[str]:
    """The flags (config fields, and the flexsample version) whose values differ between cells
    of one method: what tells two configurations with the same method name apart."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(_flags(r))
    names = [n for n in RunConfig.model_fields if not n.endswith("_options")]
    names.append("flexsample_version")
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


def _meta(record: CellRecord | FailedRecord, flags: list[str]) -> dict[str, Any]:
    c = _flags(record)
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
        "decouple": c.get("decouple", "none"),  # cells made before the flag were not decoupled
        "budget": c.get("budget", DEFAULT_BUDGET),
        "seed": c.get("seed"),
    }
    for f in flags:
        row.setdefault(f, c.get(f))
    return row


def csv_row(record: CellRecord, flags: list[str], in_grid: bool, root: Path) -> dict[str, Any]:
    """One CSV row; `_dir` (not a column) keeps the cell's folder for the plots."""
    res = record.results
    t = res["test"]
    g = t.get("group_recall") or {}
    row = _meta(record, flags)
    row.update(
        {
            "config_hash": record.key,
            "status": FINISHED,
            "test_balanced_accuracy": t["balanced_accuracy"],
            STAGE1_KEY: stage1_test_balanced_accuracy(res),
            "test_accuracy": t.get("accuracy"),
            "test_macro_f1": t.get("macro_f1"),
            "test_macro_auc": t.get("macro_auc"),
            "test_ece": t.get("ece"),
            "head": g.get("head"),
            "medium": g.get("medium"),
            "tail": g.get("tail"),
            "best_val_balanced_accuracy": res.get("best_val_balanced_accuracy"),
            "subset_size_at_best": res.get("subset_size_at_best"),
            "scored_queries": None if record.baseline else scored_queries(record.out),
            "wall_s": res.get("wall_s"),
            **{k: (res.get("compute") or {}).get(k) for k in COMPUTE_COLUMNS},
            "error": "",
            "in_grid": "yes" if in_grid else "no",
            "cell": _relative(record.out, root),
            "_dir": record.out,
        }
    )
    return row


def scored_queries(run_dir: Path) -> int | None:
    """How many queries of the run in `run_dir` had its estimator score candidates: the steps
    in scores.npz; where that file is missing, what rounds.jsonl shows (a step where some class
    took part, not all, of what it had left). 0: the estimator never ran (every growth step
    took whole classes, e.g. `--rounds 2` with policy linear goes from the anchors straight to
    the full set). None: unknown."""
    try:
        with np.load(run_dir / SCORES, allow_pickle=False) as z:
            return int(len(np.unique(z["step"])))
    except (OSError, ValueError, KeyError, EOFError):
        pass
    return _scored_from_rounds(run_dir)


def _scored_from_rounds(run_dir: Path) -> int | None:
    """scored_queries from rounds.jsonl, known only when the run reached its full training
    split (whose per-class counts are then the last step's)."""
    try:
        counts = np.array([r["class_counts"] for r in _rounds(run_dir)], dtype=np.int64)
        train_size = int(json.loads((run_dir / RESULTS).read_text())["train_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if counts.ndim != 2 or len(counts) == 0 or int(counts[-1].sum()) != train_size:
        return None
    added = np.diff(counts, axis=0)
    left = counts[-1] - counts[:-1]
    return int(((added > 0) & (added < left)).any(axis=1).sum())


def stage1_test_balanced_accuracy(results: dict[str, Any]) -> float | None:
    """A decoupled run's test balanced accuracy before its decoupling stage (results.json
    `decouple.stage1.test`; its top-level `test` is the decoupled model's), else None."""
    stage1 = ((results.get("decouple") or {}).get("stage1") or {}).get("test") or {}
    value = stage1.get("balanced_accuracy")
    return None if value is None else float(value)


def failed_row(record: FailedRecord, flags: list[str], in_grid: bool, root: Path) -> dict[str, Any]:
    """The CSV row of a cell whose last attempt failed: its configuration and error, no metrics
    (`_attempts`, not a column, is for summary.md)."""
    row = _meta(record, flags)
    row.update({k: None for k in METRIC_COLUMNS})
    row.update(
        {
            "config_hash": record.key,
            "status": FAILED,
            "error": " ".join(record.error.split()),  # one line whatever it held
            "in_grid": "yes" if in_grid else "no",
            "cell": _relative(record.out, root),
            "_dir": record.out,
            "_attempts": record.attempts,
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
    """Mean and std per (dataset, ratio, budget, method, varying flags), ranked by mean test
    balanced accuracy. The std is None below two values: one seed has no spread to show. Failed rows
    (status = failed) are left out. `seed_values` maps each seed to its test balanced accuracy
    (for the paired statistics; a seed run twice by one configuration counts by its mean) and
    `values` lists them all (for the plot)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status", FINISHED) != FINISHED:
            continue
        key = tuple(json.dumps(r.get(f), sort_keys=True) for f in flags)
        budget = r.get("budget") or DEFAULT_BUDGET
        groups[(r["dataset"], r["imbalance_ratio"], budget, r["method"], key)].append(r)
    out = []
    for (ds, ratio, budget, method, _), rs in groups.items():
        entry: dict[str, Any] = {
            "dataset": ds,
            "imbalance_ratio": ratio,
            "budget": budget,
            "method": method,
            "flags": {f: rs[0].get(f) for f in flags},
            "n": len(rs),
            "in_grid": any(r.get("in_grid", "yes") == "yes" for r in rs),
            "dirs": [r["_dir"] for r in rs if "_dir" in r],
            "values": [float(r[STAT_KEY]) for r in _by_seed(rs) if r.get(STAT_KEY) is not None],
            "seed_values": _per_seed(rs),
            "train_samples": _mean_of(rs, "train_samples"),
            # every cell known to have made no scored query: the estimator never ran
            "never_scored": all(r.get("scored_queries") == 0 for r in rs),
            "pareto": [
                (float(r["train_samples"]), float(r[STAT_KEY]))
                for r in _by_seed(rs)
                if r.get("train_samples") is not None and r.get(STAT_KEY) is not None
            ],
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
            e["budget"],
            -e["test_balanced_accuracy"][0],
            label(e),
        )
    )
    return out


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of `key` over the rows that have it (None when none does: older cells)."""
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _by_seed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in seed order (rows without a seed last, in their order)."""
    return sorted(rows, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))


def _per_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("seed") is not None and r.get(STAT_KEY) is not None:
            by_seed[int(r["seed"])].append(float(r[STAT_KEY]))
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items())}


def label(entry: dict[str, Any]) -> str:
    """The method plus its varying flags: 'entropy/linear [rounds=2, lr=0.003]'."""
    flags = entry.get("flags") or {}
    if not flags:
        return str(entry["method"])
    return f"{entry['method']} [" + ", ".join(f"{k}={_show(v)}" for k, v in flags.items()) + "]"


@dataclass
class GroupStats:
    """Paired statistics of one (dataset, ratio, budget) group, indices into its ranked entries:
    each configuration against the reference (the strongest baseline, or the best configuration
    where the group has no baseline) and against the best configuration (rank 1). None where a
    configuration is the one compared against."""

    reference: int
    reference_is_baseline: bool
    best: int
    vs_reference: list[bench_stats.PairedComparison | None]
    vs_best: list[bench_stats.PairedComparison | None]


def group_statistics(
    entries: list[dict[str, Any]], seed: int = bench_stats.BOOTSTRAP_SEED
) -> GroupStats:
    """The paired statistics of one group's entries (as ranked by `summarise`)."""
    means = [e[STAT_KEY][0] for e in entries]
    ref, is_base = bench_stats.reference_index(
        means, [e["method"].startswith("baseline:") for e in entries]
    )
    best, _ = bench_stats.reference_index(means, [False] * len(entries))

    def against(j: int) -> list[bench_stats.PairedComparison | None]:
        return [
            None
            if i == j
            else bench_stats.compare(e["seed_values"], entries[j]["seed_values"], seed)
            for i, e in enumerate(entries)
        ]

    vs_ref = against(ref)
    vs_best = vs_ref if best == ref else against(best)
    return GroupStats(ref, is_base, best, vs_ref, vs_best)


def best_mark(c: bench_stats.PairedComparison | None) -> str:
    """The *vs best* cell: best, ≈ (not distinguishable from the best), below / above, or
    n/a with fewer than two shared seeds."""
    if c is None:
        return "best"
    verdict = bench_stats.not_distinguishable(c)
    if verdict is None:
        return "n/a (one shared seed)" if c.n == 1 else "n/a (no shared seed)"
    if verdict:
        return "≈"
    return "below" if c.mean_diff < 0 else "above"


def _pp(v: float) -> str:
    """A difference in percentage points, always signed."""
    return f"{100 * v:+.2f}"


def stats_lines(entries: list[dict[str, Any]], stats: GroupStats) -> list[str]:
    """The paired-comparison table of one group."""
    ref = entries[stats.reference]
    if stats.reference_is_baseline:
        intro = f"Paired statistics against ★ {label(ref)} (the strongest baseline)."
        head = "Δ vs ★"
    else:
        intro = (
            f"No baseline in this group: paired statistics against the best configuration, "
            f"{label(ref)}."
        )
        head = "Δ vs best"
    lines = [
        intro,
        "",
        f"| configuration | shared seeds | {head} (pp) | 95 % CI (pp) | p (Wilcoxon) | vs best |",
        "|---|---:|---:|---|---|---|",
    ]
    for i, e in enumerate(entries):
        star = " ★" if i == stats.reference and stats.reference_is_baseline else ""
        mark = star + ("" if e["in_grid"] else " †")
        c = stats.vs_reference[i]
        if c is None:
            cells = ["-", "reference", "-", "-"]
        elif c.n == 0:
            cells = ["0", "-", c.ci_note, "-"]
        else:
            ci = c.ci_note if c.ci is None else f"[{_pp(c.ci[0])}, {_pp(c.ci[1])}]"
            p = c.p_note if c.p is None else ("< 0.001" if c.p < 0.001 else f"{c.p:.3f}")
            cells = [str(c.n), _pp(c.mean_diff), ci, p]
        tie = i != stats.best and _key_mean(e) == _key_mean(entries[stats.best])
        cells.append("best (tie)" if tie else best_mark(stats.vs_best[i]))
        lines.append(f"| {label(e)}{mark} | " + " | ".join(cells) + " |")
    return [*lines, ""]


STATS_NOTE = (
    "**Statistics.** Each configuration is compared with the reference of its group — the "
    "strongest baseline ★ (highest mean test balanced accuracy among the baselines), or the "
    "best configuration where the group has no baseline — over the seeds both ran (a seed only "
    "one of them ran is left out). Δ is the mean of the per-seed differences of test balanced "
    "accuracy (configuration − reference, percentage points), with a 95 % percentile bootstrap "
    f"confidence interval ({bench_stats.N_RESAMPLES} resamples of the per-seed differences, "
    f"fixed seed {bench_stats.BOOTSTRAP_SEED}; one shared seed has no interval, identical "
    "differences give the interval [Δ, Δ]). p is a two-sided Wilcoxon signed-rank test on the "
    f"same differences (zero differences dropped), run only with at least "
    f"{bench_stats.MIN_TEST_PAIRS} non-zero differences: with fewer an exact two-sided test "
    'cannot reach p < 0.05 ("too few seeds", or "too few non-zero differences"). '
    "*vs best* compares each configuration in the "
    "same way with the best configuration of its group (rank 1): ≈ = not distinguishable from "
    "the best, meaning at least 2 shared seeds and a 95 % interval of the paired difference "
    f"that contains 0, or p ≥ {bench_stats.ALPHA:g}; below / above = the interval excludes 0 "
    f"and, where the test was run, p < {bench_stats.ALPHA:g}; n/a = fewer than 2 shared seeds. "
    "Over a handful of seeds a bootstrap interval is narrower than its nominal 95 %: read "
    '"below" as a hint to run more seeds, not as proof.'
)


def write_summary_md(
    path: Path,
    summary: list[dict[str, Any]],
    command: str,
    flags: list[str] | tuple[str, ...] = (),
    failed: Sequence[dict[str, Any]] = (),
    not_counted: Sequence[str] = (),
    unverified: Sequence[str] = (),
) -> None:
    """summary.md: per (dataset, ratio, budget) group the ranking and the paired statistics,
    then the failed cells (`failed`: their bench.csv rows) and the cell folders not counted
    (`not_counted`: one line each, `RejectedCell.line`)."""
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
    if summary:
        lines += [STATS_NOTE, ""]
    if others:
        lines += [
            f"† {others} configuration{'s' if others > 1 else ''} not in this command's grid "
            "(left here by an earlier bench).",
            "",
        ]
    by_group: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in summary:
        by_group[group_key(e)].append(e)
    budgets = show_budget(summary)
    flag_head = "".join(f" {f} |" for f in flags)
    # the stage-1 column only where a configuration was decoupled
    staged = any(not np.isnan(e[STAGE1_KEY][0]) for e in summary)
    keys = [k for k in SUMMARY_KEYS if k != STAGE1_KEY]
    if staged:
        keys.insert(keys.index("best_val_balanced_accuracy"), STAGE1_KEY)
    for (ds, ratio, budget), entries in by_group.items():
        stats = group_statistics(entries)
        star = stats.reference if stats.reference_is_baseline else -1
        lines += [
            f"## {ds}"
            + ("" if ratio is None else f", r = {ratio:g}")
            + (f", budget = {budget}" if budgets else ""),
            "",
            "Ranked by mean test balanced accuracy (best-validation checkpoint; equal means "
            "share a rank, as 1=); mean ± std over seeds (percent; a single seed shows its "
            "value alone). ★ = strongest baseline; ‡ = the estimator never ran (below). "
            "Train samples: images through the training forward "
            "pass, mean over seeds (results.json `compute`; - for cells without it)."
            + (
                " Decoupled configurations (`--decouple`, baselines crt, lws, tau-norm) report "
                "the model after the decoupling stage; stage-1 test bal-acc is the same run "
                "before it (- for configurations without one)."
                if staged
                else ""
            ),
            "",
            f"| rank | method |{flag_head} seeds | test bal-acc | head | medium | tail "
            + ("| stage-1 test bal-acc " if staged else "")
            + "| best val bal-acc | train samples |",
            "|---:|---|" + "---|" * len(flags) + "---:|" * (len(keys) + 2),
        ]
        for i, (rank, e) in enumerate(zip(tie_ranks(entries), entries, strict=True)):
            mark = (" ★" if i == star else "") + ("" if e["in_grid"] else " †")
            mark += " ‡" if e.get("never_scored") else ""
            values = "".join(f" {_show(e['flags'].get(f))} |" for f in flags)
            cells = " | ".join(_pm(e[k]) for k in keys)
            samples = e.get("train_samples")
            cells += " | " + ("-" if samples is None else f"{samples:,.0f}")
            lines.append(f"| {rank} | {e['method']}{mark} |{values} {e['n']} | {cells} |")
        lines.append("")
        lines += never_ran_lines(entries)
        lines += stats_lines(entries, stats)
    if failed:
        lines += failed_lines(failed)
    if not_counted:
        lines += not_counted_lines(not_counted)
    if unverified:
        n = len(unverified)
        lines += [
            f"{n} finished cell{'s were' if n > 1 else ' was'} recorded before cells kept a "
            f"digest of results.json (e.g. `{unverified[0]}`): counted, but an edit of "
            f"{'their' if n > 1 else 'its'} results.json cannot be detected; rerun "
            f"{'them' if n > 1 else 'it'} in a new --out to check.",
            "",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def not_counted_lines(not_counted: Sequence[str]) -> list[str]:
    """The closing list of cell folders whose finished cell.json is not trusted."""
    n = len(not_counted)
    return [
        "## Cell folders not counted",
        "",
        f"{n} folder{'s' if n > 1 else ''} under this bench hold{'' if n > 1 else 's'} a "
        "finished cell.json that is not counted anywhere above (a cell is recognised by its own "
        "record: its folder name and the digest of its results.json):",
        "",
        *(f"- {line}" for line in not_counted),
        "",
    ]


def _key_mean(entry: dict[str, Any]) -> float:
    """The mean a rank compares, rounded so that equal results compare equal."""
    return round(float(entry[STAT_KEY][0]), 12)


def tie_ranks(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Competition ranks by mean test balanced accuracy, in the entries' order: configurations
    with equal means share a rank, marked '=' ('1=', '1=', '3'), never told apart by name."""
    means = [_key_mean(e) for e in entries]
    ranks = []
    for m in means:
        rank = 1 + sum(other > m for other in means)
        ranks.append(f"{rank}=" if sum(other == m for other in means) > 1 else str(rank))
    return ranks


def never_ran_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One line per configuration whose estimator never ran (‡ in the table)."""
    lines = [
        f"- ‡ {label(e)}: the estimator never ran: no query scored a candidate (each growth "
        "step took whole classes, e.g. --rounds 2 with policy linear goes from the anchors "
        "straight to the full set), so its result is the anchors' and the policy's, the same "
        "whatever the estimator"
        for e in entries
        if e.get("never_scored")
    ]
    return [*lines, ""] if lines else []


def failed_lines(failed: Sequence[dict[str, Any]]) -> list[str]:
    """The closing list of failed cells (their bench.csv rows): never in a table above."""
    n = len(failed)
    lines = [
        "## Failed cells",
        "",
        f"{n} cell{'s' if n > 1 else ''} failed (not in the tables or statistics above; "
        f"bench.csv has {'them' if n > 1 else 'it'} with status = failed and the whole error; "
        f"the next bench with the same flags reruns {'them' if n > 1 else 'it'}):",
        "",
    ]
    for r in failed:
        error = r.get("error") or "unknown error"
        if len(error) > ERROR_CHARS:
            error = error[: ERROR_CHARS - 1] + "…"
        attempts = r.get("_attempts")
        tries = f", {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        ratio = r.get("imbalance_ratio")
        where = f"{r.get('dataset')}, r = {_show(ratio)}"
        lines.append(
            f"- {r['method']} seed {_show(r.get('seed'))} ({where}{tries})"
            + ("" if r.get("in_grid", "yes") == "yes" else " †")
            + f": {error} (`{r.get('cell')}`)"
        )
    return [*lines, ""]


def group_key(entry: dict[str, Any]) -> tuple[Any, Any, str]:
    """A summary entry's table (and plot row): its dataset, ratio and training budget (each
    budget compared within itself, against its own baselines)."""
    return (entry["dataset"], entry["imbalance_ratio"], entry.get("budget") or DEFAULT_BUDGET)


def show_budget(summary: list[dict[str, Any]]) -> bool:
    """Whether headings name the budget: once any configuration was run with another budget
    than the default (summaries of epoch-budget benches read as before)."""
    return any((e.get("budget") or DEFAULT_BUDGET) != DEFAULT_BUDGET for e in summary)


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


def seed_points(entries: list[dict[str, Any]], width: float = 0.5) -> list[tuple[float, float]]:
    """(value in percent, y) of every seed of every bar, spread evenly across the bar's height
    (`width`) so that equal values stay visible, in a fixed order: the plot never changes
    between two runs over the same cells."""
    points = []
    for i, e in enumerate(entries):
        vals = e.get("values") or []
        offsets = np.linspace(-width / 2, width / 2, len(vals)) if len(vals) > 1 else [0.0]
        points += [(100 * v, i + float(o)) for v, o in zip(vals, offsets[: len(vals)], strict=True)]
    return points


def plot_summary(path: Path, summary: list[dict[str, Any]]) -> Any:
    """Bars of test balanced accuracy per configuration (whiskers only over several seeds, each
    seed's value as a dot on its bar), validation curves against subset size, and test balanced
    accuracy against training samples processed (one point per seed: the cost/quality view).
    Every accuracy axis starts at 0; configurations with identical results are drawn side by
    side (a few points apart, and said in the legend), never one over the other. Returns the
    (closed) Figure, None when nothing finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({group_key(e) for e in summary})
    budgets = show_budget(summary)
    if not groups:  # nothing finished: no picture, and none of an earlier bench left behind
        path.unlink(missing_ok=True)
        return None
    fig, axes = plt.subplots(len(groups), 3, figsize=(21, 4.8 * max(1, len(groups))), squeeze=False)
    for row, (ds, ratio, budget) in enumerate(groups):
        entries = [e for e in summary if group_key(e) == (ds, ratio, budget)]
        where = (
            f"{ds}"
            + ("" if ratio is None else f", r={ratio:g}")
            + (f", budget={budget}" if budgets else "")
        )
        bars_panel(axes[row, 0], entries, where)
        curves_panel(axes[row, 1], entries)
        pareto_panel(axes[row, 2], entries)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def bars_panel(ax: Any, entries: list[dict[str, Any]], where: str) -> None:
    """Test balanced accuracy per configuration, from 0: a bar per configuration (whiskers
    over several seeds), each seed a dot on its bar."""
    names = [label(e) + ("" if e["in_grid"] else " †") for e in entries]
    means = [100 * e["test_balanced_accuracy"][0] for e in entries]
    bars = error_bars(entries)
    colors = ["tab:gray" if e["method"].startswith("baseline:") else "tab:blue" for e in entries]
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
    points = seed_points(entries)
    if points:
        ax.scatter(
            [x for x, _ in points],
            [y for _, y in points],
            s=14,
            color="black",
            alpha=0.7,
            zorder=3,
            label="one seed",
        )
    spread = max([s for _, s in bars] + [0.0])
    finite = [m for m in means if not math.isnan(m)] or [0.0]
    dots = [x for x, _ in points] or finite
    high = max(max(finite) + spread, max(dots))
    ax.set_xlim(0.0, min(100.0, high + 3))  # from 0: bar lengths compare as values
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test balanced accuracy (%)")
    if not bars:
        spread_note = "one seed each: no error bars"
    elif len(bars) < len(entries):
        spread_note = "mean ± std over seeds (no bar: one seed)"
    else:
        spread_note = "mean ± std over seeds"
    ax.set_title(f"{where}: {spread_note}, dots = seeds (grey = baselines)")
    ax.grid(axis="x", alpha=0.3)


def curves_panel(ax: Any, entries: list[dict[str, Any]]) -> None:
    """Validation balanced accuracy (from 0) against subset size, mean over seeds, a curve per
    curriculum configuration; identical curves side by side."""
    drawn: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    for e in entries:
        if e["method"].startswith("baseline:"):
            continue
        curves = [cv for cv in (_curve(d) for d in e["dirs"]) if cv]
        if not curves:
            continue
        n = min(len(cv) for cv in curves)
        size = np.mean([[p[0] for p in cv[:n]] for cv in curves], axis=0)
        acc = np.mean([[p[1] for p in cv[:n]] for cv in curves], axis=0)
        drawn.append((e, size, 100 * acc))
    slots = overlap_slots([list(zip(size, acc, strict=True)) for _, size, acc in drawn])
    for (e, size, acc), (slot, first) in zip(drawn, slots, strict=True):
        same = "" if first is None else f" (= {label(drawn[first][0])})"
        ax.plot(size, acc, "o-", label=label(e) + same, transform=nudged(ax, slot))
    ax.set_xlabel("subset size")
    ax.set_ylabel("val balanced accuracy (%) at end of step")
    ax.set_title("Validation balanced accuracy vs subset size (mean over seeds)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.set_ylim(0.0, min(100.0, max(float(np.max(acc)) for _, _, acc in drawn) + 5))
        ax.legend(fontsize=8)


def overlap_slots(series: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[int, int | None]]:
    """Per series (a configuration's points), its slot among the series with the very same
    points (0 for the first, 1, 2 ...) and the index of the first of them (None for the first
    itself, and for a series shared with none): what `nudged` spreads apart."""
    first: dict[tuple, int] = {}
    count: dict[tuple, int] = defaultdict(int)
    slots: list[tuple[int, int | None]] = []
    for i, points in enumerate(series):
        key = tuple(sorted((round(float(x), 9), round(float(y), 9)) for x, y in points))
        slot = count[key]
        count[key] += 1
        first.setdefault(key, i)
        slots.append((slot, None if slot == 0 else first[key]))
    return slots


NUDGE_POINTS = 6.0  # how far apart identical configurations' markers are drawn


def nudged(ax: Any, slot: int) -> Any:
    """ax.transData, shifted right by `slot` x NUDGE_POINTS (in points, so the shift does not
    depend on the axis' range): the n-th of several identical configurations beside the first."""
    if slot == 0:
        return ax.transData
    from matplotlib.transforms import offset_copy

    return offset_copy(ax.transData, fig=ax.figure, x=slot * NUDGE_POINTS, y=0, units="points")


MARKERS = "o^vD<>pPX*h"


def pareto_panel(ax: Any, entries: list[dict[str, Any]]) -> None:
    """Test balanced accuracy (y, from 0) against training samples processed (x), one point per
    seed; a colour and marker per configuration, baselines as hollow squares; configurations
    with identical points side by side, said in the legend."""
    shown = 0
    drawn = [(i, e) for i, e in enumerate(entries) if e.get("pareto")]
    slots = overlap_slots([e["pareto"] for _, e in drawn])
    for (i, e), (slot, first) in zip(drawn, slots, strict=True):
        points = e["pareto"]
        baseline = e["method"].startswith("baseline:")
        color = f"C{i % 10}"  # matplotlib's default cycle, fixed per rank
        same = "" if first is None else f" (= {label(drawn[first][1])})"
        ax.scatter(
            [x for x, _ in points],
            [100 * y for _, y in points],
            marker="s" if baseline else MARKERS[shown % len(MARKERS)],
            facecolors="none" if baseline else color,
            edgecolors=color,
            s=36,
            linewidths=1.5,
            label=label(e) + same,
            zorder=3,
            transform=nudged(ax, slot),
        )
        shown += 0 if baseline else 1
    ax.set_xlabel("training samples processed")
    ax.set_ylabel("test balanced accuracy (%)")
    ax.set_title("Test bal-acc vs training samples (a point per seed, □ = baseline)")
    ax.grid(alpha=0.3)
    if ax.collections:
        top = max(100 * y for _, e in drawn for _, y in e["pareto"])
        ax.set_ylim(0.0, min(100.0, top + 5))
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            "no compute recorded (older cells)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / ROUNDS
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["subset_size"], r["val_balanced_accuracy"]) for r in _rounds(run_dir)]


@dataclass
class SummaryInfo:
    """What write_summary covered: finished cells of this grid and of other grids, failed cells
    (of any grid), and the flags that tell configurations of one method apart."""

    grid_cells: int
    other_cells: int
    flags: list[str]
    failed_cells: int = 0
    not_counted: list[str] = field(default_factory=list)  # one line per folder left out


def write_summary(
    out: Path,
    cells: list[Cell],
    command: str,
    failed: list[FailedRecord] | None = None,
) -> SummaryInfo:
    """bench.csv, summary.md and summary.png over every cell under `out`: finished cells with
    their metrics, failed ones (`failed`, by default every failure recorded under `out`) with
    status = failed and their error. Only finished cells enter the means and statistics."""
    records, rejected = collect_cells(out)
    not_counted = [r.line(out) for r in rejected]
    unverified = [_relative(r.out, out) for r in records if not r.verified]
    failures = collect_failed(out) if failed is None else failed
    wanted = {(c.out.resolve(), c.key) for c in cells}
    flags = varying_flags(records)  # of the summary: what tells finished configurations apart
    csv_flags = varying_flags([*records, *failures])
    rows = [csv_row(r, csv_flags, (r.out.resolve(), r.key) in wanted, out) for r in records]
    failed_rows = [
        failed_row(r, csv_flags, (r.out.resolve(), r.key) in wanted, out) for r in failures
    ]
    table = sorted([*rows, *failed_rows], key=lambda r: Path(r["_dir"]))
    write_csv(out / "bench.csv", table, csv_columns(csv_flags))
    summary = summarise(rows, flags)
    write_summary_md(
        out / "summary.md", summary, command, flags, failed_rows, not_counted, unverified
    )
    plot_summary(out / "summary.png", summary)
    grid = sum(r["in_grid"] == "yes" for r in rows)
    return SummaryInfo(grid, len(rows) - grid, flags, len(failed_rows), not_counted)
