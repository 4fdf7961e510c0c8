"""`flexsample splits`: make ISIC 2019 long-tailed split manifests from the ground-truth CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from flexsample.datasets.profiles import (
    ISIC2019_CODES,
    ISIC2019_TEST_PER_CLASS,
    ISIC2019_VAL_PER_CLASS,
)
from flexsample.datasets.splits import OFFICIAL_HEAD


def splits(
    ground_truth: Path = typer.Option(
        ..., "--ground-truth", help="ISIC_2019_Training_GroundTruth.csv (one-hot columns)."
    ),
    imbalance_ratio: float = typer.Option(
        100.0, "--imbalance-ratio", help="Head/tail ratio; 100, 200, 500 give the official counts."
    ),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the draw."),
    out: Path = typer.Option(..., "--out", help="Folder for dic.npy and the split files."),
    val_per_class: int = typer.Option(
        ISIC2019_VAL_PER_CLASS, "--val-per-class", help="Validation images per class (>= 1)."
    ),
    test_per_class: int = typer.Option(
        ISIC2019_TEST_PER_CLASS, "--test-per-class", help="Test images per class (>= 1)."
    ),
    head_count: int = typer.Option(
        OFFICIAL_HEAD,
        "--head-count",
        help="Training images of the head class, n_max of n_i = round(n_max * R^(-i/7)); "
        f"{OFFICIAL_HEAD} keeps the official counts for R = 100, 200, 500.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing split files."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write dic.npy, train_R.npy, val_R.npy, test_R.npy from the ISIC 2019 ground-truth CSV.

    Per class, test takes --test-per-class (100) and val --val-per-class (50) images; train takes round(n_max * R^(-i/7)) for class rank i = 0..7, n_max = --head-count (5000; with it, R = 100, 200, 500 give the official counts exactly). Lower the three counts for a small or custom CSV.

    Every check runs before anything is written: a bad input is one line on stderr and exit code 2, and leaves --out as it was.
    """  # noqa: E501 (typer keeps line breaks: one line per paragraph)
    from flexsample.datasets.splits import generate_splits

    from .app import user_errors

    with user_errors(debug):
        counts = generate_splits(
            ground_truth,
            imbalance_ratio,
            data_seed,
            out,
            overwrite=overwrite,
            val_per_class=val_per_class,
            test_per_class=test_per_class,
            head_count=head_count,
        )
        typer.echo(
            f"wrote ISIC 2019 splits (r={imbalance_ratio:g}, data seed {data_seed}) to {out}"
        )
        typer.echo("class   " + " ".join(f"{c:>5}" for c in ISIC2019_CODES))
        for split, n in counts.items():
            typer.echo(f"{split:<7} " + " ".join(f"{int(v):>5}" for v in n))
