"""BADGE selection: time and memory of the `badge` estimator's `select` for one class.

50,000 candidates with 512-D features and an 8-class linear head (the context's features
and probabilities precomputed, as after the scoring pass), k = 100 and k = 1,000:

* embed   -- `gradient_embedding` alone: the (n, C*D + C) float32 gradient embeddings;
* select  -- the estimator's whole `select` (embedding + scikit-learn `kmeans_plusplus`),
             through the engine's `select_candidates` (which validates the picks).

Memory: the embedding's size n x (C*D + C) x 4 bytes, and the peak of Python-visible
allocations (tracemalloc, NumPy included) during one k = 100 `select`.
k-means++ reads the whole embedding once per center, so k = 1,000 takes minutes on two
cores: it runs `--repeats-large` times (default 1), k = 100 `--repeats` times (default 3).

    .venv/bin/python benchmarks/badge.py [--n 50000] [--dim 512] [--classes 8]
        [--ks 100,1000] [--repeats 3] [--repeats-large 1] [--threads 0] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc

import numpy as np
import sklearn
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.scoring import select_candidates
from flexsample.estimators import build_estimator
from flexsample.estimators.diversity import gradient_embedding
from flexsample.training.models import adapt_model


def machine() -> dict:
    return {
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--ks", default="100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-large", type=int, default=1, help="repeats for k >= 1000")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for BLAS, OpenMP and torch (0: the libraries' default)",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    before = machine()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, args.dim))
    feats = np.maximum(
        centers[rng.integers(0, 50, args.n)] + 0.7 * rng.normal(size=(args.n, args.dim)), 0
    ).astype(np.float32)
    torch.manual_seed(0)
    head = nn.Linear(args.dim, args.classes)
    with torch.no_grad():
        head.weight.mul_(4.0)  # confident on some samples, unsure on others
    model = adapt_model(nn.Identity(), head, 0.5).eval()
    labels = rng.integers(0, args.classes, args.n)
    ctx = ScoringContext(
        model, tensor_inputs(torch.from_numpy(feats)), labels, seed=0, step=1, batch_size=4096
    )
    cand = np.arange(args.n)
    h, p = ctx.features(cand), ctx.probs(cand)  # the scoring pass, not timed
    est = build_estimator("badge")

    t0 = time.perf_counter()
    emb = gradient_embedding(h, p, True)
    embed_s = time.perf_counter() - t0
    emb_bytes = emb.nbytes
    del emb

    ks = [int(v) for v in args.ks.split(",")]
    times: dict[str, list[float]] = {}
    for k in ks:
        reps = args.repeats_large if k >= 1000 else args.repeats
        times[str(k)] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            picks = select_candidates(est, ctx, cand, k)
            times[str(k)].append(time.perf_counter() - t0)
        assert len(np.unique(picks)) == k

    tracemalloc.start()
    select_candidates(est, ctx, cand, min(ks))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    out = {
        "n": args.n,
        "dim": args.dim,
        "classes": args.classes,
        "bias": True,
        "threads": args.threads or "default",
        "machine_before": before,
        "machine_after": machine(),
        "embed_s": embed_s,
        "select_median_s": {k: float(np.median(v)) for k, v in times.items()},
        "select_times_s": times,
        "embedding_bytes": emb_bytes,
        "embedding_gib": emb_bytes / 2**30,
        f"peak_traced_gib_select_k{min(ks)}": peak / 2**30,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
