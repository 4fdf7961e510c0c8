"""Wall time of one small bench grid under each launcher, and what each launcher costs per cell.

    python benchmarks/bench_launchers.py [--seeds 0,1,2] [--launchers local1,local2,ray]
        [--rounds 5 --epochs-per-round 20]

Runs `flexsample bench` as a user would (a subprocess each, fresh output folder) with
`--launcher local --jobs 1`, `--launcher local --jobs 2` and `--launcher ray` (a local Ray
runtime with this machine's cores) on the same grid, every cell at one torch thread
(`--cpus-per-cell 1`) so that all launchers must give identical metrics (checked). Per
launcher it reports the grid's wall time and the overhead per cell:

    overhead per cell = (wall x slots - sum of the cells' own wall_s) / cells

i.e. the slot-seconds not spent inside a cell (process or task start, imports, scheduling,
the driver's polling and the summary), where slots = cells that run at once (1, 2, and
min(cores, cells) for Ray).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = [
    "--estimators",
    "random,entropy",
    "--policies",
    "linear",
    "--baselines",
    "ce",
    "--device",
    "cpu",
    "--cpus-per-cell",
    "1",
]
MODES = {
    "local1": ["--launcher", "local", "--jobs", "1"],
    "local2": ["--launcher", "local", "--jobs", "2"],
    "ray": ["--launcher", "ray"],
}


def run(mode: str, seeds: str, root: Path, size: list[str]) -> dict:
    out = root / mode
    cmd = [
        sys.executable,
        "-m",
        "flexsample",
        "bench",
        "--out",
        str(out),
        "--seeds",
        seeds,
        *GRID,
        *size,
        *MODES[mode],
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cells = [json.loads(p.read_text()) for p in out.rglob("cell.json")]
    with open(out / "bench.csv", encoding="utf-8") as fh:
        rows = {(r["method"], r["seed"]): r["test_balanced_accuracy"] for r in csv.DictReader(fh)}
    slots = {"local1": 1, "local2": 2}.get(mode, min(os.cpu_count() or 1, len(cells)))
    inside = sum(c["wall_s"] for c in cells)
    return {
        "mode": mode,
        "cells": len(cells),
        "wall_s": wall,
        "inside_s": inside,
        "overhead_per_cell_s": (wall * slots - inside) / len(cells),
        "metrics": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--launchers", default="local1,local2,ray")
    ap.add_argument("--rounds", default="3")
    ap.add_argument("--epochs-per-round", default="2")
    ap.add_argument("--keep", type=Path, help="keep the bench folders here")
    args = ap.parse_args()
    size = ["--rounds", args.rounds, "--epochs-per-round", args.epochs_per_round]
    root = Path(tempfile.mkdtemp(prefix="fs-launchers-"))
    try:
        results = [run(m, args.seeds, root, size) for m in args.launchers.split(",")]
    finally:
        if args.keep:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(
        f"cores: {os.cpu_count()}, load average after: {' '.join(load)}; grid: {' '.join(GRID)} "
        f"{' '.join(size)} --seeds {args.seeds}"
    )
    print("| launcher | cells | grid wall (s) | sum of cell wall_s (s) | overhead per cell (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['cells']} | {r['wall_s']:.1f} | {r['inside_s']:.1f} | "
            f"{r['overhead_per_cell_s']:.2f} |"
        )
    same = all(r["metrics"] == results[0]["metrics"] for r in results)
    print(f"identical test balanced accuracy in every cell across launchers: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
