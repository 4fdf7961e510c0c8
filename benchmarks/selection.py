"""Per-class quotas + top-k over 1,000,000 scores in 14 classes vs one np.argpartition.

The floor is `np.argpartition(scores, -k)[-k:]` on the same scores for the same total k:
the cheapest way to take the k best without classes. The curriculum loop's path,
`select_segments` over candidates grouped by class (the pool's layout), must stay within 2x
of it; `select_per_class` (candidates in any order, grouped first) is timed beside it.
Medians of repeats, all timed in the same process, interleaved.

    .venv/bin/python benchmarks/selection.py [--n 1000000] [--classes 14] [--k 50000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from flexsample.engine.selection import select_per_class, select_segments


def long_tailed_labels(n: int, classes: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Labels with an exponential class profile (head/tail ratio `ratio`), shuffled."""
    w = ratio ** (-np.arange(classes) / max(classes - 1, 1))
    counts = np.floor(w / w.sum() * n).astype(np.int64)
    counts[0] += n - counts.sum()
    return rng.permutation(np.repeat(np.arange(classes), counts))


def quotas_for(labels: np.ndarray, classes: int, k: int) -> np.ndarray:
    """Quotas summing to k, roughly balanced, never above a class's count."""
    counts = np.bincount(labels, minlength=classes)
    q = np.minimum(counts, k // classes)
    while q.sum() < k:  # hand the rest to classes with room
        room = counts - q
        q += np.minimum(room, -(-(k - q.sum()) // max((room > 0).sum(), 1)))
    while q.sum() > k:
        q[np.argmax(q)] -= 1
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=14)
    ap.add_argument("--k", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # candidates: a sorted subset of a larger split, as the curriculum loop passes them
    candidates = np.sort(rng.choice(int(args.n * 1.25), args.n, replace=False)).astype(np.int64)
    labels = long_tailed_labels(args.n, args.classes, 100.0, rng)
    scores = rng.random(args.n)
    quotas = quotas_for(labels, args.classes, args.k)
    assert quotas.sum() == args.k

    def floor() -> np.ndarray:
        return np.argpartition(scores, -args.k)[-args.k :]

    # the loop's layout: the pool hands candidates grouped by class, ascending in each
    order = np.lexsort((candidates, labels))
    g_cand, g_scores = candidates[order], scores[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=args.classes))])

    def grouped() -> np.ndarray:
        return select_segments(g_cand, g_scores, bounds, quotas)

    def ungrouped() -> np.ndarray:
        return select_per_class(candidates, scores, labels, quotas)

    assert np.array_equal(grouped(), ungrouped()) and len(grouped()) == args.k
    fns = {"floor": floor, "select_segments": grouped, "select_per_class": ungrouped}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):  # interleaved, so machine load hits all alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "n": args.n,
        "classes": args.classes,
        "k": args.k,
        "repeats": args.repeats,
        "median_s": med,
        "ratio_vs_argpartition": {
            "select_segments (the loop's path, candidates grouped by class)": med["select_segments"]
            / med["floor"],
            "select_per_class (any order: groups first)": med["select_per_class"] / med["floor"],
        },
        "target": "<= 2.0",
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
