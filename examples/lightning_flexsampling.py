"""Flexible sampling in a PyTorch Lightning fit: the `FlexSampling` callback on digits-lt.

An ordinary LightningModule (training_step, validation_step returning logits,
configure_optimizers) around a network made to fit the engine's model contract with
`adapt_model`. The callback grows the training subset from the anchors to the full split
(linear schedule, difficulty allocation from the validation per-class recall, MC-dropout
scores); a checkpoint of the fit resumes the curriculum too (`ckpt_path=`).

    pip install 'flexsample[lightning]'
    python examples/lightning_flexsampling.py --rounds 3 --epochs-per-round 4 --seed 0
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from flexsample.datasets import build_dataset
from flexsample.integrations.lightning import FlexSampling
from flexsample.training.models import adapt_model


class DigitsClassifier(L.LightningModule):
    """A plain LightningModule; `self.model` meets the contract (embed, head, dropout_p)."""

    def __init__(self, num_classes: int, lr: float = 3e-3) -> None:
        super().__init__()
        embedding = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU())
        self.model = adapt_model(embedding, nn.Linear(128, num_classes), dropout=0.5)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        return logits  # FlexSampling computes the per-class recall from these

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def balanced_accuracy(module: L.LightningModule, loader: DataLoader, num_classes: int) -> float:
    module.eval()
    hits, totals = torch.zeros(num_classes), torch.zeros(num_classes)
    with torch.no_grad():
        for x, y in loader:
            pred = module(x).argmax(1)
            totals += torch.bincount(y, minlength=num_classes)
            hits += torch.bincount(y[pred == y], minlength=num_classes)
    present = totals > 0
    return float((hits[present] / totals[present]).mean())


def main(
    rounds: int = 3,
    epochs_per_round: int = 4,
    seed: int = 0,
    estimator: str = "mcdropout",
    allocation: str = "difficulty",
) -> dict:
    L.seed_everything(seed, verbose=False)
    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    flex = FlexSampling(
        ds.train.torch_dataset(train=True),
        ds.train.labels,
        ds.num_classes,
        rounds=rounds,
        epochs_per_round=epochs_per_round,
        policy="linear",
        allocation=allocation,
        estimator=estimator,
        anchors="random",
        seed=seed,
        batch_size=32,
    )
    val = DataLoader(ds.val.torch_dataset(train=False), batch_size=256)
    trainer = L.Trainer(
        max_epochs=flex.epoch_budget,
        reload_dataloaders_every_n_epochs=1,  # the train loader follows the growing subset
        callbacks=[flex],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = DigitsClassifier(ds.num_classes)
    trainer.fit(module, datamodule=flex.datamodule(val))
    for r in flex.records:
        print(
            f"step {r.step}: epochs {r.epoch}-{r.epoch + r.epochs - 1}  subset {r.subset_size:4d}"
            f"  counts {r.class_counts}  val bal-acc {r.val_balanced_accuracy:.3f}"
        )
    test = DataLoader(ds.test.torch_dataset(train=False), batch_size=256)
    test_acc = balanced_accuracy(module, test, ds.num_classes)
    print(f"test balanced accuracy {test_acc:.3f}")
    return {"records": flex.records, "test_balanced_accuracy": test_acc, "flex": flex}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs-per-round", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default="mcdropout")
    parser.add_argument("--allocation", default="difficulty")
    args = parser.parse_args()
    main(args.rounds, args.epochs_per_round, args.seed, args.estimator, args.allocation)
