"""curves.png: validation balanced accuracy vs subset size, and the subset's composition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
