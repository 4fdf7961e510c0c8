"""BALD scoring throughput: flexsample vs baal 2.x vs one deterministic forward pass.

A timm resnet18 (random init, no download) with dropout 0.5 before the classifier, 8
classes, a pool of random images, T MC draws, batch 64, all in this process with the same
torch threads. Methods, timed interleaved so machine load hits all alike:

* floor       -- one deterministic forward pass over the pool (model(x), eval mode);
* flexsample  -- ScoringContext + the `mcdropout` estimator (BALD, head mode): backbone once,
                 T hashed dropout masks on the pooled features, one batched head matmul;
* baal        -- ModelWrapper + MCDropoutModule with baal's defaults (replicate_in_memory),
                 scored with baal's BALD heuristic;
* baal-cache  -- the same wrapped in MCCachingModule, with replicate_in_memory=False (what
                 baal recommends for caching).

baal's DataLoader runs with workers=0 (its default is 4 worker processes): every method
then computes in this one process, and the pool is an in-memory tensor anyway.

    pip install -e '.[bench]'   # baal
    .venv/bin/python benchmarks/scoring_throughput.py [--pool 512] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
import warnings

import numpy as np
import torch
from torch import nn

from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.registry import get_estimator
from flexsample.engine.scoring import score_candidates
from flexsample.training.models import create_model


class BaalNet(nn.Module):
    """The same model with its dropout as an nn.Dropout module, which baal patches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(model.dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.dropout(self.model.embed(x)))


def quiet_baal() -> None:
    """baal logs every prediction through structlog; keep the output readable."""
    try:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    except ImportError:
        pass
    warnings.filterwarnings("ignore", module="baal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-baal", action="store_true", help="only flexsample vs the floor")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = create_model("resnet18", 8, 3, dropout=0.5).eval()
    x = torch.randn(args.pool, 3, args.size, args.size)
    labels = np.zeros(args.pool, dtype=np.int64)
    candidates = np.arange(args.pool)
    estimator = get_estimator("mcdropout", mc_samples=args.samples, mc_score="bald", mc_mode="head")
    scores: dict[str, np.ndarray] = {}

    def floor() -> None:
        with torch.inference_mode():
            for start in range(0, args.pool, args.batch):
                model(x[start : start + args.batch])

    def flexsample() -> None:
        ctx = ScoringContext(model, tensor_inputs(x), labels, seed=0, step=1, batch_size=args.batch)
        scores["flexsample"] = score_candidates(estimator, ctx, candidates)

    methods = {"floor": floor, "flexsample": flexsample}
    if not args.no_baal:
        quiet_baal()
        from baal.active.heuristics import BALD
        from baal.bayesian.caching_utils import MCCachingModule
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs
        from torch.utils.data import TensorDataset

        dataset = TensorDataset(x, torch.as_tensor(labels))
        default = ModelWrapper(
            MCDropoutModule(BaalNet(copy.deepcopy(model))),
            TrainingArgs(batch_size=args.batch, use_cuda=False, workers=0),
        )
        cached = ModelWrapper(
            MCCachingModule(MCDropoutModule(BaalNet(copy.deepcopy(model)))),
            TrainingArgs(
                batch_size=args.batch, use_cuda=False, workers=0, replicate_in_memory=False
            ),
        )

        def baal_default() -> None:
            pred = default.predict_on_dataset(dataset, iterations=args.samples, verbose=False)
            scores["baal"] = BALD().get_uncertainties(pred)

        def baal_cache() -> None:
            pred = cached.predict_on_dataset(dataset, iterations=args.samples, verbose=False)
            scores["baal-cache"] = BALD().get_uncertainties(pred)

        methods.update({"baal": baal_default, "baal-cache": baal_cache})

    for fn in methods.values():  # warm-up: allocator, oneDNN primitives
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratios = {"flexsample_over_floor": med["flexsample"] / med["floor"]}
    if "baal" in med:
        ratios["baal_over_flexsample"] = med["baal"] / med["flexsample"]
        ratios["baal_cache_over_flexsample"] = med["baal-cache"] / med["flexsample"]
    out = {
        "pool": args.pool,
        "image_size": args.size,
        "mc_samples": args.samples,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "median_s": med,
        "times_s": times,
        "images_per_s": {k: args.pool / v for k, v in med.items()},
        "ratios": ratios,
        "targets": {
            "baal_over_flexsample": ">= 20",
            "baal_cache_over_flexsample": ">= 4",
            "flexsample_over_floor": "<= 1.15",
        },
        "mean_bald": {k: float(np.mean(v)) for k, v in scores.items()},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
