"""Drive flexsample's engine from your own plain-PyTorch training code.

No `flexsample.training`, no CLI: a user model (an MLP here) exposes the model contract
(embed, head, dropout_p). The starting subset is chosen by prototype anchors over a feature
matrix you supply (`features=`); each query's budget is split across classes by the
difficulty allocation (more samples for classes with low validation recall). Two drivers:

- `main`: the `Curriculum` loop runs the schedule; your code is a small `Learner` object
  (start_round / train_epoch / validate).
- `manual_loop`: you run every step yourself (policy state, budget, quotas, scoring,
  `select_per_class`), e.g. to fit an existing training script.

    python examples/custom_loop.py --rounds 4 --epochs 15 --seed 0
    python examples/custom_loop.py --manual
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flexsample.datasets import build_dataset
from flexsample.engine import (
    Callback,
    Curriculum,
    EpochResult,
    PolicyState,
    Pool,
    QueryResult,
    ScoringContext,
    ValRecord,
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


def per_class_recall(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> list[float]:
    """Recall of every class present in `y` (the difficulty allocation reads these)."""
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    return [float((pred[y == c] == c).mean()) for c in np.unique(y)]


def pixel_features(x: torch.Tensor) -> np.ndarray:
    """One feature row per training image for the prototype anchors: here the raw pixels.

    Any (N, D) array aligned with the training labels works: a pretrained backbone's
    embeddings, self-supervised features, hand-made descriptors.
    """
    return x.reshape(len(x), -1).numpy().astype(np.float32)


class MLPLearner:
    """The `Learner` protocol: what `Curriculum` calls to train and validate."""

    def __init__(self, model: MLP, x: torch.Tensor, y: np.ndarray, val: Any, seed: int):
        self.model, self.x, self.y, self.val, self.seed = model, x, torch.as_tensor(y), val, seed
        self.opt: torch.optim.Optimizer | None = None

    def start_round(self, round_index: int, num_epochs: int) -> None:
        """A fresh optimizer each round (and after each query)."""
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        t0, losses = time.perf_counter(), []
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        subset = torch.as_tensor(indices)
        self.model.train()
        for batch in subset[torch.randperm(len(subset), generator=gen)].split(32):
            loss = self.batch_loss(batch)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
        return EpochResult(loss=float(np.mean(losses)), seconds=time.perf_counter() - t0)

    def batch_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The mean loss of one batch of training indices."""
        return nn.functional.cross_entropy(self.model(self.x[batch]), self.y[batch])

    def validate(self) -> tuple[float, Sequence[float]]:
        recall = per_class_recall(self.model, self.val.in_memory, self.val.labels)
        return float(np.mean(recall)), recall

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


class QueryLog(Callback):
    """Prints each query's per-class quotas (the difficulty allocation at work)."""

    def __init__(self) -> None:
        self.queries: list[QueryResult] = []

    def on_query(self, result: QueryResult) -> None:
        self.queries.append(result)
        print(f"query step {result.step}: quotas {result.quotas.tolist()}")


def main(rounds: int = 4, epochs: int = 15, seed: int = 0, estimator: str = "mcdropout") -> dict:
    """The Curriculum loop: prototype anchors, linear schedule, difficulty allocation."""
    torch.manual_seed(seed)
    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    x_train, y_train = ds.train.in_memory, ds.train.labels
    model = MLP(x_train[0].numel(), ds.num_classes)

    features = pixel_features(x_train)
    anchors = get_anchors("prototype").select(y_train, ds.num_classes, seed, features=features)
    log = QueryLog()
    loop = Curriculum(
        Pool(y_train, ds.num_classes),
        get_policy("linear"),
        get_allocation("difficulty"),
        get_estimator(estimator),
        MLPLearner(model, x_train, y_train, ds.val, seed),
        tensor_inputs(x_train),
        rounds=rounds,
        epochs_per_round=epochs,
        seed=seed,
        callbacks=[log],
    )
    loop.start(anchors)
    result = loop.run()  # the best weights are in loop.best_state (no checkpoint_dir given)
    for rec in result.records:
        print(f"step {rec.step}: subset {rec.subset_size:4d}  counts {rec.class_counts}")
    model.load_state_dict(loop.best_state["model"])
    test_acc = float(np.mean(per_class_recall(model, ds.test.in_memory, ds.test.labels)))
    print(f"best val bal-acc {result.best_val_balanced_accuracy:.3f} (epoch {result.best_epoch})")
    print(f"test balanced accuracy {test_acc:.3f}")
    return {
        "records": result.records,
        "queries": log.queries,
        "val_history": loop.history,
        "anchors": anchors,
        "test_balanced_accuracy": test_acc,
        "pool": loop.pool,
    }


def manual_loop(
    rounds: int = 4, epochs: int = 15, seed: int = 0, estimator: str = "mcdropout"
) -> dict:
    """The same curriculum with every step written out (query at the start of each round)."""
    torch.manual_seed(seed)
    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    x_train, y_train = ds.train.in_memory, ds.train.labels
    model = MLP(x_train[0].numel(), ds.num_classes)
    learner = MLPLearner(model, x_train, y_train, ds.val, seed)

    pool = Pool(y_train, ds.num_classes)
    anchors = get_anchors("prototype").select(
        y_train, ds.num_classes, seed, features=pixel_features(x_train)
    )
    pool.add(anchors, step=0)
    schedule, allocation = get_policy("linear"), get_allocation("difficulty")
    scorer = get_estimator(estimator)
    val_history: list[ValRecord] = []
    history = []

    for r in range(rounds):
        state = PolicyState(
            epoch=r * epochs,
            step=r,
            rounds=rounds,
            epochs_per_round=epochs,
            subset_counts=pool.subset_counts(),
            remaining_counts=pool.remaining_counts(),
            anchor_size=len(anchors),
            val_history=tuple(val_history),  # the difficulty allocation reads the last recall
        )
        quotas = None
        if r > 0 and schedule.should_query(state):
            quotas = allocation.quotas(state, schedule.budget(state))
            candidates = pool.remaining_indices()
            ctx = ScoringContext(model, tensor_inputs(x_train), y_train, seed=seed, step=r)
            scores = score_candidates(scorer, ctx, candidates)
            pool.add(select_per_class(candidates, scores, y_train[candidates], quotas), step=r)

        learner.start_round(r, epochs)  # your training loop, untouched
        for e in range(r * epochs, (r + 1) * epochs):
            learner.train_epoch(pool.subset_indices(), e)
            bal, recall = learner.validate()
            val_history.append(ValRecord(e, bal, tuple(recall)))
        history.append(
            {
                "round": r,
                "subset_size": pool.size,
                "quotas": None if quotas is None else quotas.tolist(),
                "val_balanced_accuracy": bal,
            }
        )
        print(
            f"round {r}: subset {pool.size:4d}  counts {pool.subset_counts().tolist()}  "
            f"val bal-acc {bal:.3f}"
        )

    test_acc = float(np.mean(per_class_recall(model, ds.test.in_memory, ds.test.labels)))
    print(f"test balanced accuracy {test_acc:.3f}")
    return {
        "history": history,
        "val_history": val_history,
        "anchors": anchors,
        "test_balanced_accuracy": test_acc,
        "pool": pool,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default="mcdropout")
    parser.add_argument("--manual", action="store_true", help="run manual_loop instead")
    args = parser.parse_args()
    (manual_loop if args.manual else main)(args.rounds, args.epochs, args.seed, args.estimator)
