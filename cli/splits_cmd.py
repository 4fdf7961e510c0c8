"""`flexsample splits`: make ISIC 2019 long-tailed split manifests from the ground-truth CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from flexsample.datasets.profiles import ISIC2019_CODES
from flexsample.datasets.splits import generate_splits


def splits(
    ground_truth: Path = typer.Option(
        ..., "--ground-truth", help="ISIC_2019_Training_GroundTruth.csv (one-hot columns)."
    ),
    imbalance_ratio: float = typer.Option(
        100.0, "--imbalance-ratio", help="Head/tail ratio; 100, 200, 500 give the official counts."
    ),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the draw."),
    out: Path = typer.Option(..., "--out", help="Folder for dic.npy and the split files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing split files."),
) -> None:
    """Write dic.npy, train_R.npy, val_R.npy, test_R.npy (val 50 / test 100 per class).

    Raises FlexsampleError on bad input (the app prints it as one line and exits 2).
    """
    counts = generate_splits(ground_truth, imbalance_ratio, data_seed, out, overwrite=overwrite)
    typer.echo(f"wrote ISIC 2019 splits (r={imbalance_ratio:g}, data seed {data_seed}) to {out}")
    typer.echo("class   " + " ".join(f"{c:>5}" for c in ISIC2019_CODES))
    for split, n in counts.items():
        typer.echo(f"{split:<7} " + " ".join(f"{int(v):>5}" for v in n))
