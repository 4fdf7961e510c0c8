"""kNN density: flexsample's `knn_density` vs scikit-learn brute force vs bare faiss.

20,000 x 512 float32 features (clustered, like pooled CNN features), k = 10, every row a
query against all rows (itself excluded), as the `density` estimator does for a split:

* floor    -- the bare faiss search: IndexFlatIP over pre-normalised rows, k + 1 results;
* density  -- `flexsample.estimators.knn_density` (normalise a copy, search, drop self, mean);
* sklearn  -- NearestNeighbors(n_neighbors=k + 1, algorithm="brute") on the normalised rows
              (euclidean on unit vectors ranks exactly as cosine), then the same mean.

Agreement: the fraction of rows whose k-neighbour *sets* are identical in flexsample and
scikit-learn (float near-ties may swap the k-th neighbour).

    .venv/bin/python benchmarks/knn_density.py [--n 20000] [--dim 512] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from flexsample.estimators.density import knn_density, knn_search, l2_normalize


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    x = centers[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, dim))
    return np.maximum(x, 0).astype(np.float32)  # non-negative, like post-ReLU pooled features


def neighbour_sets(ids: np.ndarray, rows: np.ndarray) -> list[frozenset[int]]:
    """The k neighbours of each row without the row itself (or without the last, if absent)."""
    out = []
    for r, line in zip(rows, ids, strict=True):
        line = [int(i) for i in line]
        if r in line:
            line.remove(int(r))
        else:
            line = line[:-1]
        out.append(frozenset(line))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for faiss, BLAS and OpenMP alike (0: the libraries' default)",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)  # sklearn's OpenMP and BLAS pools
    feats = clustered(args.n, args.dim)
    unit = l2_normalize(feats)
    rows = np.arange(args.n)
    k = args.k

    def floor() -> None:
        index = faiss.IndexFlatIP(args.dim)
        index.add(unit)
        index.search(unit, k + 1)

    def ours() -> None:
        knn_density(feats, k=k)

    def sklearn() -> None:
        nn_ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(l2_normalize(feats))
        dist, _ = nn_.kneighbors(l2_normalize(feats))
        (1.0 - dist[:, 1:] ** 2 / 2.0).mean(axis=1)

    methods = {"floor": floor, "density": ours, "sklearn": sklearn}
    times: dict[str, list[float]] = {m: [] for m in methods}
    floor()  # warm-up
    for _ in range(args.repeats):  # interleaved, so machine load hits all alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {m: float(np.median(v)) for m, v in times.items()}

    # agreement of neighbour sets and of the density values
    _, ids_ours = knn_search(unit, unit, k + 1)  # the search knn_density runs
    nn_ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(unit)
    dist, ids_sk = nn_.kneighbors(unit)
    same = np.mean(
        [
            a == b
            for a, b in zip(
                neighbour_sets(ids_ours, rows), neighbour_sets(ids_sk, rows), strict=True
            )
        ]
    )
    dens_sk = (1.0 - dist[:, 1:] ** 2 / 2.0).mean(axis=1)
    max_diff = float(np.abs(knn_density(feats, k=k) - dens_sk).max())

    out = {
        "n": args.n,
        "dim": args.dim,
        "k": k,
        "repeats": args.repeats,
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "median_s": med,
        "times_s": times,
        "ratios": {
            "sklearn_over_density": med["sklearn"] / med["density"],
            "density_over_floor": med["density"] / med["floor"],
        },
        "targets": {
            "sklearn_over_density": ">= 3",
            "density_over_floor": "<= 1.2",
            "same_neighbour_sets": ">= 0.999",
        },
        "same_neighbour_sets": float(same),
        "max_abs_density_diff_vs_sklearn": max_diff,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
