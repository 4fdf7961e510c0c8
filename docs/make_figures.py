"""Draw docs/assets/curriculum.png, the curriculum picture of the method page and the README,
from a real run: `flexsample run` with its defaults (digits-lt at r = 100, prototype anchors,
MC-dropout BALD, linear policy, difficulty allocation, 5 rounds x 20 epochs, seed 0) and the
CSV tracker for the per-epoch validation curve.

    python docs/make_figures.py            # about 10 s on two CPU cores; writes only the PNG

The run itself goes into a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "assets" / "curriculum.png"


def draw(run_dir: Path, out: Path = OUT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    names = results["class_names"]
    with open(run_dir / "logs" / "epochs.csv", newline="") as fh:
        epochs = list(csv.DictReader(fh))
    full = np.asarray(steps[-1]["class_counts"])
    order = np.argsort(-full, kind="stable")  # head to tail

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3), width_ratios=[1, 1.15])
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(steps)))
    x = np.arange(len(order))
    for record, colour in zip(steps, colours, strict=True):
        counts = np.asarray(record["class_counts"])[order]
        what = "anchors" if record["step"] == 0 else f"query {record['step']}"
        label = f"step {record['step']} ({what}): {record['subset_size']} images"
        left.plot(x, counts, "o-", color=colour, label=label, lw=2, ms=5)
    left.plot(x, full[order], "k--", lw=1, label="full training set")
    left.set_yscale("log")
    left.set_xticks(x, [names[c] for c in order])
    left.set_xlabel("class (digit), from head to tail")
    left.set_ylabel("images in the training subset")
    left.set_title("The subset grows from balanced anchors to the long tail")
    left.legend(fontsize=8, loc="upper right")
    left.grid(alpha=0.3, which="both")

    epoch = np.array([int(r["epoch"]) + 1 for r in epochs])
    val = np.array([float(r["val_balanced_accuracy"]) for r in epochs])
    size = np.array([int(float(r["train_subset_size"])) for r in epochs])
    right.plot(epoch, val, color="tab:orange", lw=1.5, label="validation balanced accuracy")
    for record in steps[1:]:
        right.axvline(record["epoch"] + 0.5, color="grey", ls=":", lw=1)
    right.set_xlabel("epoch (dotted: a query adds samples)")
    right.set_ylabel("validation balanced accuracy", color="tab:orange")
    right.set_ylim(0, 1)
    twin = right.twinx()
    twin.step(epoch, size, where="mid", color="tab:blue", lw=1.5)
    twin.set_ylabel("training subset size", color="tab:blue")
    twin.set_ylim(0, full.sum() * 1.1)
    test = results["test"]["balanced_accuracy"]
    right.set_title(f"Training on the growing subset (test balanced accuracy {test:.3f})")
    right.grid(alpha=0.3)
    fig.suptitle(
        "flexsample run (defaults): digits-lt r = 100, MC-dropout BALD, linear policy, "
        "difficulty allocation, 5 rounds x 20 epochs, seed 0",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    import flexsample

    work = Path(tempfile.mkdtemp(prefix="flexsample-figure-"))
    try:
        res = flexsample.run(out=work / "run", log_to="csv", seed=0)
        draw(res.run_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
