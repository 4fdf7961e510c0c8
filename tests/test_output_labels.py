"""Output labels (issue 23): with --decouple the final table and calibration.png say which model
is the decoupled one; summary.png's accuracy axes start at 0 and identical configurations'
markers never hide each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flexsample.workflows.bench_summary import plot_summary, summarise


def metrics(value: float) -> dict:
    return {
        "balanced_accuracy": value,
        "accuracy": value,
        "macro_f1": value,
        "per_class_recall": [value, value],
        "group_recall": {"head": value, "tail": value},
    }


# --- the final table of `flexsample run` --------------------------------------------------------


def test_plain_run_columns_keep_their_names():
    from flexsample.cli.console import result_columns

    results = {"test": metrics(0.5), "test_last": metrics(0.4)}
    assert list(result_columns(results)) == ["best-val checkpoint", "last weights"]


def test_decoupled_run_says_which_column_is_the_decoupled_classifier():
    from rich.console import Console

    from flexsample.cli.console import metrics_table, result_columns

    stage1 = metrics(0.45)
    results = {
        "test": metrics(0.5),  # stage 2: the decoupled classifier
        "test_last": metrics(0.4),  # the curriculum's last weights, never decoupled
        "decouple": {"method": "crt", "stage1": {"test": stage1}, "stage2": {}},
    }
    columns = result_columns(results)
    assert list(columns) == [
        "decoupled classifier (crt) on the best-val checkpoint",
        "best-val checkpoint, before decoupling",
        "last weights (not decoupled)",
    ]
    assert [c["balanced_accuracy"] for c in columns.values()] == [0.5, 0.45, 0.4]
    console = Console(width=200, record=True)
    console.print(metrics_table(columns, ["a", "b"]))
    text = console.export_text()
    assert "decoupled classifier (crt) on the best-val checkpoint" in text
    assert "last weights (not decoupled)" in text


# --- calibration.png ----------------------------------------------------------------------------


def calibration() -> dict:
    return {
        "n_bins": 2,
        "count": [3, 5],
        "confidence": [0.3, 0.8],
        "accuracy": [0.33, 0.8],
    }


@pytest.mark.parametrize(
    "decouple, subject",
    [
        ("none", "test split, best-validation checkpoint"),
        ("crt", "test split, decoupled classifier (crt) on the best-validation checkpoint"),
        (
            "tau-norm",
            "test split, decoupled classifier (tau-norm) on the best-validation checkpoint",
        ),
    ],
)
def test_calibration_title_names_the_model(tmp_path, decouple, subject):
    from flexsample.workflows.plots import calibration_subject, plot_reliability

    assert calibration_subject(decouple) == subject
    fig = plot_reliability(
        tmp_path / "calibration.png", calibration(), 0.05, f"digits-lt\n{subject}"
    )
    assert (tmp_path / "calibration.png").is_file()
    title = fig.axes[0].get_title()
    assert subject in title and "ECE = 0.0500" in title
    eval_subject = calibration_subject(decouple, "flexsample eval")
    assert eval_subject == f"{subject} (flexsample eval)"


# --- summary.png --------------------------------------------------------------------------------


def rows_of(tmp_path: Path) -> list[dict]:
    """Two curriculum configurations with identical results (an estimator that never ran), one
    that differs, and a baseline; two seeds each."""
    rows = []
    for method, accs, curve in [
        ("entropy/linear", (0.62, 0.64), [(66, 0.2), (254, 0.6)]),
        ("random/linear", (0.62, 0.64), [(66, 0.2), (254, 0.6)]),
        ("margin/linear", (0.58, 0.6), [(66, 0.2), (200, 0.5), (254, 0.58)]),
        ("baseline:ce", (0.7, 0.72), []),
    ]:
        for seed, acc in enumerate(accs):
            folder = tmp_path / method.replace("/", "-").replace(":", "-") / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "rounds.jsonl").write_text(
                "".join(
                    json.dumps({"subset_size": n, "val_balanced_accuracy": v}) + "\n"
                    for n, v in curve
                )
            )
            rows.append(
                {
                    "dataset": "digits-lt",
                    "imbalance_ratio": 100.0,
                    "method": method,
                    "seed": seed,
                    "test_balanced_accuracy": acc,
                    "best_val_balanced_accuracy": acc,
                    "train_samples": 320 if not method.startswith("baseline") else 500,
                    "_dir": folder,
                }
            )
    return rows


def display(artist) -> np.ndarray:
    """Where an artist's points are drawn, in display (pixel) coordinates."""
    if hasattr(artist, "get_offsets"):
        return artist.get_offset_transform().transform(artist.get_offsets())
    return artist.get_transform().transform(np.column_stack(artist.get_data()))


def test_summary_png_accuracy_axes_start_at_zero_and_identical_markers_stay_visible(tmp_path):
    summary = summarise(rows_of(tmp_path))
    fig = plot_summary(tmp_path / "summary.png", summary)
    assert (tmp_path / "summary.png").is_file()
    bars, curves, pareto = fig.axes[:3]
    assert bars.get_xlim()[0] == 0.0 and bars.get_xlim()[1] <= 100.0
    assert curves.get_ylim()[0] == 0.0
    assert pareto.get_ylim()[0] == 0.0

    # the two identical configurations: drawn side by side, and said in the legend
    by_label = {c.get_label(): c for c in pareto.collections}
    first, second = by_label["entropy/linear"], by_label["random/linear (= entropy/linear)"]
    assert np.array_equal(first.get_offsets(), second.get_offsets())  # the same data
    apart = display(second) - display(first)
    assert np.all(np.abs(apart[:, 0]) >= 5) and np.allclose(apart[:, 1], 0)
    lines = {ln.get_label(): ln for ln in curves.lines}
    apart = display(lines["random/linear (= entropy/linear)"]) - display(lines["entropy/linear"])
    assert np.all(np.abs(apart[:, 0]) >= 5)
    # a configuration with other results is drawn where its data is
    other = by_label["margin/linear"]
    assert np.allclose(display(other), pareto.transData.transform(other.get_offsets()))
