"""Issue 13: accuracy against training compute, from finished bench cells.

Reads every finished cell (cell.json + results.json) under the given bench folders, groups the
cells into methods (the configuration without seed and data seed), and prints, per imbalance
ratio:

* a table per budget view (equal epochs, equal training samples): test and validation
  balanced accuracy (mean ± std over every (data seed, seed) pair), training samples processed
  and their share of the full-set baseline's;
* paired comparisons (per (data seed, seed), 95 % percentile bootstrap interval of the mean
  difference, `flexsample.workflows.bench_stats`) of named pairs;
* an ablation table (validation balanced accuracy decides; test shown beside it).

and draws a Pareto plot (test balanced accuracy against training samples processed, one point
per cell). Nothing here trains: run the bench commands in RESULTS.md section 11 first.

    python benchmarks/curriculum_compute.py benchmarks/out/q13/d0 benchmarks/out/q13/d1 \\
        benchmarks/out/q13/d2 --plot benchmarks/out/q13/pareto.png \\
        --json benchmarks/out/q13/q13.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.workflows.bench_stats import compare
from flexsample.workflows.components import flat_view, is_old_layout, migrate

# the configuration keys that tell methods apart (everything else is fixed by the grid)
KEYS = (
    "estimator",
    "policy",
    "loss",
    "logit_adjust",
    "sampler",
    "budget",
    "restart",
    "lr_subset_scale",
    "checkpoint_on",
    "init",
    "decouple",
    "acquisition",
    "mc_source",
    "recipe",
    "optimizer",
    "allocation",
)


def load_cells(roots: list[Path]) -> list[dict[str, Any]]:
    cells = []
    for root in roots:
        for cell_file in sorted(root.rglob("cell.json")):
            cell = json.loads(cell_file.read_text())
            results = cell_file.parent / "results.json"
            if cell.get("status") != "finished" or not results.is_file():
                continue
            res = json.loads(results.read_text())
            raw = cell["config"]
            cfg = flat_view(
                migrate(raw) if is_old_layout(raw) else raw
            )  # options under their own names, old cells too
            cells.append(
                {
                    "method": cell["method"],
                    "baseline": bool(cell.get("baseline")),
                    "key": tuple((k, cfg.get(k)) for k in KEYS),
                    "ratio": float(cfg["imbalance_ratio"]),
                    "pair": (int(cfg["data_seed"]), int(cfg["seed"])),
                    "test": float(res["test"]["balanced_accuracy"]),
                    "val": float(res["best_val_balanced_accuracy"]),
                    "samples": int(res["compute"]["train_samples"]),
                    "train_s": float(res["compute"]["train_s"]),
                }
            )
    return cells


def label(key: tuple, baseline: bool, method: str) -> str:
    cfg = dict(key)
    if baseline or method.startswith("recipe:"):
        name = method
    else:
        loss = cfg["loss"] + (f"+LA{cfg['logit_adjust']:g}" if cfg["logit_adjust"] else "")
        name = f"{cfg['estimator']}/{cfg['policy']} {loss}"
    extras = [f"budget={cfg.get('budget') or 'epochs'}"] if not baseline else []
    for k, default in (
        ("restart", "fresh"),
        ("lr_subset_scale", 0.0),
        ("checkpoint_on", "val"),
        ("init", "random"),
        ("decouple", "none"),
        ("acquisition", "topk"),
        ("mc_source", "dropout"),
    ):
        if cfg.get(k, default) not in (default, None):
            extras.append(f"{k}={cfg[k]}")
    return name + (" " + " ".join(extras) if extras else "")


def summarise(cells: list[dict[str, Any]]) -> dict[float, dict[str, dict[str, Any]]]:
    """ratio -> method label -> per-pair values and means."""
    out: dict[float, dict[str, dict[str, Any]]] = defaultdict(dict)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["ratio"], label(c["key"], c["baseline"], c["method"]))].append(c)
    for (ratio, name), cs in groups.items():
        out[ratio][name] = {
            "n": len(cs),
            "test": {c["pair"]: c["test"] for c in cs},
            "val": {c["pair"]: c["val"] for c in cs},
            "samples": float(np.mean([c["samples"] for c in cs])),
            "train_s": float(np.mean([c["train_s"] for c in cs])),
            "points": [(c["samples"], c["test"]) for c in cs],
        }
    return out


def _ms(values: dict) -> str:
    v = 100 * np.array(list(values.values()))
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}"


def paired(a: dict, b: dict) -> dict[str, Any]:
    """a - b in percentage points over the shared (data seed, seed) pairs."""
    ids = {p: i for i, p in enumerate(sorted(set(a) | set(b)))}
    c = compare({ids[p]: 100 * v for p, v in a.items()}, {ids[p]: 100 * v for p, v in b.items()})
    return {"n": c.n, "diff": c.mean_diff, "ci": c.ci}


def _fmt_paired(d: dict[str, Any]) -> str:
    ci = d["ci"]
    ci_text = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a"
    return f"{d['diff']:+.2f} {ci_text} (n={d['n']})"


def report(summary: dict[float, dict[str, dict[str, Any]]], pairs: list[tuple[str, str]]) -> dict:
    doc: dict[str, Any] = {}
    for ratio in sorted(summary, reverse=True):
        methods = summary[ratio]
        full = [m["samples"] for name, m in methods.items() if name == "baseline:ce"]
        full_samples = full[0] if full else float("nan")
        print(f"\n## digits-lt r = {ratio:g}\n")
        print("| method | cells | test bal-acc | val bal-acc | training samples | vs full set |")
        print("|---|---:|---:|---:|---:|---:|")
        rows = sorted(methods.items(), key=lambda kv: -np.mean(list(kv[1]["val"].values())))
        for name, m in rows:
            share = m["samples"] / full_samples
            print(
                f"| {name} | {m['n']} | {_ms(m['test'])} | {_ms(m['val'])} | "
                f"{m['samples']:,.0f} | {share:.0%} |"
            )
        doc[f"{ratio:g}"] = {
            "methods": {
                name: {
                    "n": m["n"],
                    "test": float(np.mean(list(m["test"].values()))),
                    "val": float(np.mean(list(m["val"].values()))),
                    "samples": m["samples"],
                    "train_s": m["train_s"],
                }
                for name, m in methods.items()
            },
            "paired": {},
        }
        print("\n| a − b (pp) | test: mean [95 % CI] | validation: mean [95 % CI] |")
        print("|---|---|---|")
        for a, b in pairs:
            if a in methods and b in methods:
                cols = []
                for metric in ("test", "val"):
                    d = paired(methods[a][metric], methods[b][metric])
                    doc[f"{ratio:g}"]["paired"][f"{metric}: {a} - {b}"] = d
                    cols.append(_fmt_paired(d))
                print(f"| {a} − {b} | {cols[0]} | {cols[1]} |")
    return doc


def plot(summary: dict[float, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted(summary, reverse=True)
    fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 7), squeeze=False)
    for ax, ratio in zip(axes[0], ratios, strict=True):
        for name, m in sorted(summary[ratio].items()):
            xs, ys = zip(*m["points"], strict=True)
            ax.scatter(xs, 100 * np.array(ys), s=14, alpha=0.6, label=name)
            ax.scatter([np.mean(xs)], [100 * np.mean(ys)], s=80, marker="x", color="black")
        ax.set_title(f"digits-lt r = {ratio:g}: test balanced accuracy vs training compute")
        ax.set_xlabel("training samples processed (x: method mean)")
        ax.set_ylabel("test balanced accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="bench --out folders")
    parser.add_argument(
        "--pair",
        action="append",
        default=[],
        help="'A|B': print the paired difference A - B (method labels)",
    )
    parser.add_argument("--plot", type=Path, help="write the Pareto plot here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    summary = summarise(load_cells(args.roots))
    pairs = [tuple(p.split("|", 1)) for p in args.pair]
    doc = report(summary, pairs)  # type: ignore[arg-type]
    if args.plot:
        plot(summary, args.plot)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
