"""Your own DDP training loop under torchrun, with flexsample's scoring sharded over the ranks.

    torchrun --standalone --nproc-per-node 2 examples/torchrun_loop.py --rounds 3 --epochs 5

Every rank runs this script. The distributed part of training is yours: you start the process
group and wrap your model in DistributedDataParallel. flexsample needs one thing more: pass
`ranks=Ranks()` (the default process group; `Ranks(group)` for another one) to `Curriculum`
(or to a `ScoringContext` you build yourself). Each query then scores its shard of the
candidates on every rank and gathers the results, and rank 0's selection is broadcast, so all
ranks hold the same pool. Only rank 0 prints. Without torchrun it runs as one process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from flexsample.datasets import build_dataset
from flexsample.engine import (
    Curriculum,
    Pool,
    get_allocation,
    get_anchors,
    get_estimator,
    get_policy,
    tensor_inputs,
)
from flexsample.engine.distributed import Ranks

sys.path.insert(0, str(Path(__file__).parent))
from custom_loop import MLP, MLPLearner, pixel_features  # noqa: E402 (the example next door)


class DDPLearner(MLPLearner):
    """MLPLearner's protocol, trained with DDP: every global batch of 32 is split across the
    ranks (the same seeded order on every rank), gradients are averaged by DDP."""

    def __init__(
        self, model: MLP, x: torch.Tensor, y: np.ndarray, val: Any, seed: int, ranks: Ranks
    ):
        super().__init__(model, x, y, val, seed)
        self.ranks = ranks
        self.ddp = DistributedDataParallel(model) if ranks.sharded else model

    def batch_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of the global batch, weighted by its size: DDP averages the
        ranks' gradients, so the result is the global batch's mean gradient."""
        mine = torch.as_tensor(self.ranks.shard(batch.numpy()))
        if len(mine) == 0:  # a global batch smaller than the number of ranks
            return self.ddp(self.x[batch[:1]]).sum() * 0.0  # no samples, but join the all-reduce
        share = len(mine) * self.ranks.world / len(batch)
        return nn.functional.cross_entropy(self.ddp(self.x[mine]), self.y[mine]) * share


def main(rounds: int = 3, epochs: int = 5, seed: int = 0, estimator: str = "mcdropout") -> dict:
    if dist.is_available() and "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")  # "nccl" with one GPU per rank
    ranks = Ranks()
    torch.manual_seed(seed)  # the same initial weights on every rank
    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    x_train, y_train = ds.train.in_memory, ds.train.labels
    model = MLP(x_train[0].numel(), ds.num_classes)
    anchors = get_anchors("prototype").select(
        y_train, ds.num_classes, seed, features=pixel_features(x_train)
    )
    loop = Curriculum(
        Pool(y_train, ds.num_classes),
        get_policy("linear"),
        get_allocation("difficulty"),
        get_estimator(estimator),
        DDPLearner(model, x_train, y_train, ds.val, seed, ranks),
        tensor_inputs(x_train),
        rounds=rounds,
        epochs_per_round=epochs,
        seed=seed,
        ranks=ranks,  # scoring sharded over the ranks, one selection for all
    )
    loop.start(anchors)
    result = loop.run()
    digest = hashlib.sha256(loop.pool.subset_indices().tobytes()).digest()
    digests = ranks.gather_rows(np.frombuffer(digest, np.uint8)[None, :])  # one row per rank
    same = bool((digests == digests[0]).all())
    if ranks.is_main:
        for rec in result.records:
            print(f"step {rec.step}: subset {rec.subset_size:4d}  counts {rec.class_counts}")
        print(f"best val bal-acc {result.best_val_balanced_accuracy:.3f}")
        print(f"{ranks.world} rank(s); identical pools on every rank: {same}")
    if ranks.sharded:
        dist.destroy_process_group()
    return {"records": result.records, "identical_pools": same, "world": ranks.world}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default="mcdropout")
    args = parser.parse_args()
    main(args.rounds, args.epochs, args.seed, args.estimator)
