"""curves.png (validation balanced accuracy vs subset size, the subset's composition) and
calibration.png (the test reliability diagram)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .outputs import save_figure


def plot_curves(
    path: Path,
    records: list[dict[str, Any]],
    val_curve: list[tuple[int, int, float]],
    class_names: list[str],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if val_curve:
        _, size, acc = zip(*val_curve, strict=True)
        ax1.plot(size, acc, ".", alpha=0.35, color="tab:blue", label="every epoch")
    if records:
        ax1.plot(
            [r["subset_size"] for r in records],
            [r["val_balanced_accuracy"] for r in records],
            "o-",
            color="tab:orange",
            label="end of each step",
        )
    ax1.set_xlabel("subset size (training samples)")
    ax1.set_ylabel("validation balanced accuracy")
    ax1.set_title("Validation balanced accuracy vs subset size")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="lower right")

    if records:
        counts = np.array([r["class_counts"] for r in records], dtype=np.float64)
        frac = counts / counts.sum(1, keepdims=True)
        steps = np.arange(len(records))
        bottom = np.zeros(len(records))
        cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
        for c, name in enumerate(class_names):
            ax2.bar(steps, frac[:, c], bottom=bottom, color=cmap(c % cmap.N), label=name)
            bottom += frac[:, c]
        for s, total in zip(steps, counts.sum(1), strict=True):
            ax2.text(s, 1.01, f"n={int(total)}", ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(steps, [f"step {r['step']}" for r in records])
        ax2.set_ylim(0, 1.1)
        ax2.set_ylabel("share of the subset")
        ax2.set_title("Per-class composition (balanced start -> long-tailed full set)")
        ax2.legend(
            fontsize=7,
            ncol=2 if len(class_names) > 8 else 1,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
        )
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def calibration_subject(decouple: str | None = None, source: str = "") -> str:
    """What calibration.png shows, for its title: the test split of the best-validation
    checkpoint, or with `--decouple` of the decoupled classifier (stage 2, whose head best.pt
    then holds) on it. `source` names who drew it (e.g. "flexsample eval")."""
    if decouple and decouple != "none":
        model = f"decoupled classifier ({decouple}) on the best-validation checkpoint"
    else:
        model = "best-validation checkpoint"
    return f"test split, {model}" + (f" ({source})" if source else "")


def plot_calibration(
    path: Path,
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    title: str = "",
) -> Any:
    """calibration.png from predicted probabilities (N, C) and true labels (N,)."""
    from flexsample.training.metrics import calibration_report

    return plot_reliability(path, *calibration_report(probs, labels, n_bins), title)


def plot_reliability(
    path: Path, calibration: dict[str, Any], ece: float | None, title: str = ""
) -> Any:
    """A reliability diagram: per confidence bin, the accuracy of the top-label prediction
    against the diagonal of perfect calibration, with each bin's sample count.

    `calibration` is a report's "calibration" entry (n_bins, count, confidence, accuracy), so
    the picture can be redrawn from results.json alone; the ECE goes into the title, after
    `title` (end it with `calibration_subject(...)`: which model the picture is of). Returns
    the (closed) Figure, for tests and notebooks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bins = int(calibration["n_bins"])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    width = 1.0 / n_bins
    count = np.asarray(calibration["count"], dtype=np.int64)
    acc = np.array([np.nan if v is None else v for v in calibration["accuracy"]], np.float64)
    conf = np.array([np.nan if v is None else v for v in calibration["confidence"]], np.float64)
    full = count > 0

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax1.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax1.bar(
        edges[:-1][full],
        acc[full],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        alpha=0.8,
        label="accuracy in bin",
    )
    centres = edges[:-1] + width / 2
    ax1.vlines(  # each bin's gap between accuracy and mean confidence
        centres[full],
        acc[full],
        conf[full],
        color="tab:red",
        linewidth=2,
        label="gap (accuracy - confidence)",
    )
    ax1.plot(
        centres[full],
        conf[full],
        "D",
        color="tab:red",
        markersize=4,
        label="mean confidence in bin",
    )
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1.02)
    ax1.set_ylabel("accuracy")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    ece_text = "n/a (empty split)" if ece is None else f"{ece:.4f}"
    head = f"{title}\n" if title else ""
    ax1.set_title(f"{head}Reliability diagram  ECE = {ece_text}  ({n_bins} bins)", fontsize=10)

    ax2.bar(edges[:-1], count, width=width, align="edge", color="tab:gray", edgecolor="black")
    for left, c in zip(edges[:-1], count, strict=True):
        if c:
            ax2.text(left + width / 2, c, str(int(c)), ha="center", va="bottom", fontsize=7)
    ax2.set_ylim(0, max(1, int(count.max(initial=0))) * 1.25)
    ax2.set_xlabel("confidence of the predicted class")
    ax2.set_ylabel("samples")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
    return fig
