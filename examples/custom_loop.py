"""Drive flexsample's engine from your own plain-PyTorch training loop.

No `flexsample.training`, no CLI: a user model (an MLP here) exposes the model contract
(embed, head, dropout_p); the pool tracks the subset; a schedule decides how many samples
to add each round; an allocation splits them across classes; an estimator scores the
candidates; `select_per_class` picks the winners.

    python examples/custom_loop.py --rounds 4 --epochs 15 --seed 0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from flexsample.datasets import build_dataset
from flexsample.engine import (
    PolicyState,
    Pool,
    ScoringContext,
    get_allocation,
    get_anchors,
    get_estimator,
    get_policy,
    score_candidates,
    select_per_class,
    tensor_inputs,
)


class MLP(nn.Module):
    """A user's model: an embedding, dropout, and a final linear head."""

    def __init__(self, in_features: int, num_classes: int, dropout_p: float = 0.5):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)
        self.dropout_p = dropout_p

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.dropout(self.embed(x), self.dropout_p, self.training))


def balanced_accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def main(rounds: int = 4, epochs: int = 15, seed: int = 0, estimator: str = "mcdropout") -> dict:
    torch.manual_seed(seed)
    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    x_train, y_train = ds.train.in_memory, ds.train.labels
    model = MLP(x_train[0].numel(), ds.num_classes)

    pool = Pool(y_train, ds.num_classes)
    pool.add(get_anchors("random").select(y_train, ds.num_classes, seed), step=0)
    schedule, allocation = get_policy("linear"), get_allocation("proportional")
    scorer = get_estimator(estimator)
    history = []

    for r in range(rounds):
        state = PolicyState(
            epoch=r * epochs,
            step=r,
            rounds=rounds,
            epochs_per_round=epochs,
            subset_counts=pool.subset_counts(),
            remaining_counts=pool.remaining_counts(),
            anchor_size=int((pool.entered == 0).sum()),
        )
        if r > 0 and schedule.should_query(state):
            quotas = allocation.quotas(state, schedule.budget(state))
            candidates = pool.remaining_indices()
            ctx = ScoringContext(model, tensor_inputs(x_train), y_train, seed=seed, step=r)
            scores = score_candidates(scorer, ctx, candidates)
            pool.add(select_per_class(candidates, scores, y_train[candidates], quotas), step=r)

        # your training loop, untouched: a fresh optimizer per round
        subset = torch.as_tensor(pool.subset_indices())
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        for _ in range(epochs):
            model.train()
            for batch in subset[torch.randperm(len(subset), generator=gen)].split(32):
                loss = nn.functional.cross_entropy(
                    model(x_train[batch]), torch.as_tensor(y_train[batch])
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        acc = balanced_accuracy(model, ds.val.in_memory, ds.val.labels)
        history.append({"round": r, "subset_size": pool.size, "val_balanced_accuracy": acc})
        counts = pool.subset_counts().tolist()
        print(f"round {r}: subset {pool.size:4d}  counts {counts}  val bal-acc {acc:.3f}")

    test_acc = balanced_accuracy(model, ds.test.in_memory, ds.test.labels)
    print(f"test balanced accuracy {test_acc:.3f}")
    return {"history": history, "test_balanced_accuracy": test_acc, "pool": pool}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default="mcdropout")
    args = parser.parse_args()
    main(args.rounds, args.epochs, args.seed, args.estimator)
