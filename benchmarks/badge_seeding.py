"""BADGE's k-means++ seeding: flexsample's torch seedings vs scikit-learn's `kmeans_plusplus`.

The same float32 rows (default 50,000 x 512, clustered: 50 Gaussian blobs, ReLU'd as pooled
features are), k = 1,000, on the CPU. Sides, interleaved so each sees the same machine load:

* sklearn        -- `sklearn.cluster.kmeans_plusplus(x, k, random_state=seed)`;
* ours-greedy    -- `kmeanspp_seeding(x, k, seed, "greedy")`: the same rule and random stream
                    (the picks are compared with scikit-learn's);
* ours-authors   -- `kmeanspp_seeding(x, k, seed, "authors")`: BADGE's own seeding (largest
                    norm first, then plain D^2 sampling; one distance pass per pick).

With `--classes C` the rows are instead BADGE gradient embeddings a_i (x) h_i of C classes
(width C x dim): scikit-learn gets the built (n, C*dim) embedding, ours its factors.
Median of `--repeats` runs per side; ratio = scikit-learn's median / ours.

    python benchmarks/badge_seeding.py [--small] [--n 50000] [--dim 512] [--k 1000]
        [--classes 0] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import sklearn
import torch
from sklearn.cluster import kmeans_plusplus

from flexsample.estimators.diversity import kmeanspp_seeding


def conditions() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo", encoding="ascii")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "torch_threads_default": torch.get_num_threads(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
    }


def rows(n: int, dim: int, classes: int, seed: int = 0):
    """(rows for scikit-learn, (g, a) factors for ours; a None for plain rows)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    x = np.maximum(centers[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, dim)), 0)
    x = x.astype(np.float32)
    if not classes:
        return x, (torch.from_numpy(x), None)
    logits = x @ rng.normal(size=(dim, classes)).astype(np.float32) * 0.2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a = p.astype(np.float32)
    a[np.arange(n), p.argmax(1)] -= 1.0
    emb = (a[:, :, None] * x[:, None, :]).reshape(n, classes * dim)
    return emb, (torch.from_numpy(x), torch.from_numpy(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="5,000 x 64, k = 100 (a quick run)")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument(
        "--classes",
        type=int,
        default=0,
        help="0: plain rows; C: BADGE gradient embeddings of C classes",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sklearn", action="store_true", help="ours only (no ratio)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.small:
        args.n, args.dim, args.k = 5_000, 64, 100

    before = conditions()
    print("machine:", json.dumps(before), flush=True)
    x, (g, a) = rows(args.n, args.dim, args.classes, args.seed)
    print(
        f"rows {args.n} x {x.shape[1]}"
        + (f" (factors: {args.classes} x {args.dim})" if args.classes else "")
        + f", k = {args.k}, median of {args.repeats}",
        flush=True,
    )
    sides = {
        "ours-authors": lambda: kmeanspp_seeding(g, args.k, args.seed, "authors", a=a),
        "ours-greedy": lambda: kmeanspp_seeding(g, args.k, args.seed, "greedy", a=a),
    }
    if not args.skip_sklearn:
        sides["sklearn"] = lambda: kmeans_plusplus(x, args.k, random_state=args.seed)[1]
    times: dict[str, list[float]] = {s: [] for s in sides}
    picks: dict[str, list[int]] = {}
    for r in range(args.repeats):
        for side, fn in sides.items():
            t0 = time.perf_counter()
            picks[side] = np.asarray(fn()).tolist()
            times[side].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1} {side:>13}: {times[side][-1]:8.2f} s", flush=True)
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"\n{'side':>13} {'median s':>9} {'sklearn/ours':>12}")
    for side in sides:
        ratio = med["sklearn"] / med[side] if "sklearn" in med else float("nan")
        print(f"{side:>13} {med[side]:>9.2f} {ratio:>12.1f}")
    same = picks.get("sklearn") == picks["ours-greedy"] if "sklearn" in picks else None
    if same is not None:
        print(f"ours-greedy picks == scikit-learn's: {same}")
    after = conditions()
    print("load average after:", after["load_avg_1_5_15"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "args": vars(args),
                    "before": before,
                    "after": after,
                    "times": times,
                    "median_s": med,
                    "greedy_same_picks_as_sklearn": same,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
