"""Core-set selection: flexsample's `kcenter_greedy` vs a plain NumPy k-center greedy.

100,000 x 512 float32 features, 1,000 centers picked from an empty start (first row 0) or
after an initial subset of `--subset` centers (the first rows; candidates are the rest):

* plain  -- the textbook greedy: per center, ((X - c) ** 2).sum(1) over all N rows in
            float32, min-update, argmax (first maximum = lowest index on ties);
* gemv   -- the same with the distance pass as ||x||^2 - 2 X @ c + ||c||^2 (float32 BLAS
            GEMV): a faster plain variant, whose rounding differs, so its centers may part
            from the others' at a near-tie (`--no-gemv` skips it);
* ours   -- `flexsample.estimators.diversity.kcenter_greedy` (lazy exact updates).

`ours` computes every deciding distance with plain's arithmetic, so the two must pick
IDENTICAL centers (checked, exactly). The plain greedy takes minutes at the default size:
it runs `--baseline-repeats` times (default 1), ours `--repeats` times (default 3); the
figures are medians. Data: `clustered` (50 Gaussian clusters, post-ReLU, like pooled CNN
features) or `gauss` (isotropic, the hardest case for pruning of any kind).

    .venv/bin/python benchmarks/coreset.py [--n 100000] [--dim 512] [--k 1000] [--subset 0]
        [--data clustered|gauss] [--repeats 3] [--baseline-repeats 1] [--threads 0] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from flexsample.estimators.diversity import kcenter_greedy


def make_data(kind: str, n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal((n, dim), dtype=np.float32)
    centers = rng.normal(size=(50, dim))
    x = centers[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, dim))
    return np.maximum(x, 0).astype(np.float32)


def plain_greedy(x: np.ndarray, k: int, centers: np.ndarray | None) -> np.ndarray:
    d = np.full(len(x), np.inf, dtype=np.float32)
    picks: list[int] = []
    if centers is not None and len(centers):
        for c in centers:
            d = np.minimum(d, ((x - c) ** 2).sum(axis=1))
    else:
        picks.append(0)
        d = ((x - x[0]) ** 2).sum(axis=1)
        d[0] = -np.inf
    while len(picks) < k:
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(axis=1))
        d[picks] = -np.inf
    return np.asarray(picks)


def gemv_greedy(x: np.ndarray, k: int, centers: np.ndarray | None) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)

    def dist(c: np.ndarray) -> np.ndarray:
        return sq - 2.0 * (x @ c) + np.float32(c @ c)

    d = np.full(len(x), np.inf, dtype=np.float32)
    picks: list[int] = []
    if centers is not None and len(centers):
        for c in centers:
            d = np.minimum(d, dist(c))
    else:
        picks.append(0)
        d = dist(x[0])
        d[0] = -np.inf
    while len(picks) < k:
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, dist(x[i]))
        d[picks] = -np.inf
    return np.asarray(picks)


def machine() -> dict:
    return {
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
    }


def first_divergence(a: np.ndarray, b: np.ndarray) -> int | None:
    diff = np.flatnonzero(a[: min(len(a), len(b))] != b[: min(len(a), len(b))])
    return int(diff[0]) if len(diff) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--subset", type=int, default=0, help="initial centers (the first rows)")
    ap.add_argument("--data", choices=["clustered", "gauss"], default="clustered")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--no-gemv", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for BLAS, OpenMP, faiss and torch (0: the libraries' default)",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    before = machine()
    data = make_data(args.data, args.n + args.subset, args.dim)
    centers = data[: args.subset] if args.subset else None
    x = data[args.subset :]

    times: dict[str, list[float]] = {"ours": [], "plain": [], "gemv": []}
    picks: dict[str, np.ndarray] = {}
    methods = {
        "ours": (lambda: kcenter_greedy(x, args.k, centers, first=0), args.repeats),
        "plain": (lambda: plain_greedy(x, args.k, centers), args.baseline_repeats),
    }
    if not args.no_gemv:
        methods["gemv"] = (lambda: gemv_greedy(x, args.k, centers), args.baseline_repeats)
    for r in range(max(reps for _, reps in methods.values())):  # interleaved repeats
        for name, (fn, reps) in methods.items():
            if r < reps:
                t0 = time.perf_counter()
                picks[name] = fn()
                times[name].append(time.perf_counter() - t0)
    med = {m: float(np.median(v)) for m, v in times.items() if v}
    out = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "subset": args.subset,
        "data": args.data,
        "repeats": {m: len(v) for m, v in times.items() if v},
        "threads": args.threads or "default",
        "machine_before": before,
        "machine_after": machine(),
        "median_s": med,
        "times_s": {m: v for m, v in times.items() if v},
        "speedup_plain_over_ours": med["plain"] / med["ours"],
        "target": "speedup_plain_over_ours >= 5 with identical centers",
        "identical_to_plain": bool(np.array_equal(picks["ours"], picks["plain"])),
        "first_divergence_from_plain": first_divergence(picks["ours"], picks["plain"]),
    }
    if "gemv" in med:
        out["speedup_gemv_over_ours"] = med["gemv"] / med["ours"]
        out["identical_to_gemv"] = bool(np.array_equal(picks["ours"], picks["gemv"]))
        out["first_divergence_from_gemv"] = first_divergence(picks["ours"], picks["gemv"])
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
