"""benchmarks/isic_scale.py --small on the CPU: every figure is in the JSON and sane.

A tight configuration (32 px, timm's tiny `test_resnet`, 27 training images, one val and one
test image per class, 2 x 1 epochs, no warm-up run) so that it finishes well within a minute
on a loaded 2-core machine. No timing is asserted: only that the figures exist and are consistent.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "isic_scale.py"


def tiny_backbone() -> str:
    """timm's tiny test ResNet where this timm has it (1.0.x), else its smallest ResNet."""
    import timm

    return "test_resnet" if timm.is_model("test_resnet") else "resnet10t"


TIGHT = [
    "--small",
    "--image-size",
    "32",
    "--scale",
    "0.002",
    "--val-per-class",
    "1",
    "--test-per-class",
    "1",
    "--bare-epochs",
    "1",
    "--workers",
    "0",
    "--score-batch-size",
    "64",
    "--device",
    "cpu",
    "--no-warm-up",
]
RUN_KEYS = (
    "wall_s",
    "epochs",
    "train_s",
    "train_samples",
    "train_img_s",
    "train_img_s_steady",
    "stall_s",
    "stall_share",
    "gpu_mem_peak_mib",
    "per_epoch",
)
FLEX_KEYS = (
    "run_total_s",
    "queries",
    "score_s",
    "score_s_per_query",
    "score_s_per_query_max",
    "score_samples",
    "final_subset_size",
    "test_balanced_accuracy",
)
RATIOS = (
    "curriculum_train_throughput_vs_bare",
    "full_set_train_throughput_vs_bare",
    "curriculum_wall_vs_full_set_wall",
    "scoring_share_of_curriculum_wall",
    "curriculum_samples_vs_full_set",
)


def positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_small_mode_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "isic_small.json"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *TIGHT,
            "--backbone",
            tiny_backbone(),
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device: CPU" in proc.stdout  # the exact device name is printed
    assert "| scoring in all (s) |" in proc.stdout
    d = json.loads(out.read_text())

    assert d["device"] == "cpu" and d["device_name"].startswith("CPU")
    n = d["config"]["train_images"]
    assert n == sum(d["config"]["train_counts"]) == 27  # 10/5/2/2/2/2/2/2
    cur, full, bare = d["curriculum"], d["full_set"], d["bare"]
    for r in (cur, full, bare):
        for key in RUN_KEYS:
            assert key in r, key
        for key in ("wall_s", "train_s", "train_samples", "train_img_s", "train_img_s_steady"):
            assert positive(r[key]), (key, r[key])
        assert r["gpu_mem_peak_mib"] is None  # "n/a" on a CPU
        assert 0 <= r["stall_s"] <= r["train_s"] <= r["wall_s"] + 1e-6
        assert 0 <= r["stall_share"] <= 1
        assert sum(e["samples"] for e in r["per_epoch"]) == r["train_samples"]
    for r in (cur, full):
        for key in FLEX_KEYS:
            assert key in r, key
        assert r["epochs"] == d["config"]["epochs"] == 2
        assert 0 <= r["score_s"] <= r["wall_s"]
        assert r["run_total_s"] <= r["wall_s"] + 1e-6
        assert "projected_wall_s_at_paper_epochs" in r
        assert r["projected_wall_s_at_paper_epochs"] >= r["wall_s"]
    # the curriculum queried (scoring measured) and trained on fewer samples; the control none
    assert cur["queries"] >= 1 and positive(cur["score_s"]) and positive(cur["score_s_per_query"])
    assert cur["score_s_per_query"] <= cur["score_s_per_query_max"] <= cur["score_s"] + 1e-9
    assert full["queries"] == 0 and full["score_s"] < cur["score_s"]
    assert full["train_samples"] == 2 * n and cur["train_samples"] < full["train_samples"]
    assert full["final_subset_size"] == n and cur["final_subset_size"] < n
    assert bare["epochs"] == 1 and bare["train_samples"] == n

    r = d["ratios"]
    for key in RATIOS:
        assert positive(r[key]), (key, r[key])
    assert r["scoring_share_of_curriculum_wall"] <= 1
    assert math.isclose(r["curriculum_wall_vs_full_set_wall"], cur["wall_s"] / full["wall_s"])
    assert math.isclose(r["scoring_share_of_curriculum_wall"], cur["score_s"] / cur["wall_s"])
    assert d["table"] in proc.stdout
