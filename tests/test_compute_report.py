"""results.json `compute` (samples processed and seconds per phase), and the bench columns,
summary.md column and Pareto panel built from it (issue 13, "Compute in every report")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flexsample.training.ssl import ssl_samples
from flexsample.workflows.bench import CELL_FILE, Cell, config_hash
from flexsample.workflows.bench_summary import COMPUTE_COLUMNS, CSV_COLUMNS, write_summary
from flexsample.workflows.config import RunConfig
from flexsample.workflows.outputs import RESULTS

from .conftest import Cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ["--quiet", "--device", "cpu"]
TWO_BY_TWO = ["--rounds", "2", "--epochs-per-round", "2"]
# three rounds: the middle one takes part of the split, so its query scores candidates
SCORED = ["--rounds", "3", "--epochs-per-round", "1", "--policy", "linear"]
DIGITS_LT_TRAIN = 254  # digits-lt r = 100, data seed 0: training images


def _run(tmp_path: Path, name: str, *flags: str) -> tuple[dict, list[dict], Path]:
    out = tmp_path / name
    res = Cli()("run", *BASE, *flags, "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return results, rounds, out


def _subset_sizes_per_epoch(out: Path, rounds: list[dict]) -> list[int]:
    """Each epoch's subset size, from selection.npz (the step each index joined at) and the
    epochs each step trained: a source independent of rounds.jsonl's subset_size."""
    steps = np.load(out / "selection.npz")["step"]
    return [int((steps <= r["step"]).sum()) for r in rounds for _ in range(r["epochs"])]


def test_curriculum_counts_epochs_of_subsets_and_each_candidate_once(tmp_path):
    results, rounds, out = _run(tmp_path, "entropy", *SCORED, "--estimator", "entropy")
    compute = results["compute"]
    sizes = _subset_sizes_per_epoch(out, rounds)
    assert len(sizes) == 3  # rounds x epochs
    assert compute["train_samples"] == sum(sizes)
    assert compute["train_samples"] < 3 * DIGITS_LT_TRAIN  # the curriculum's promise
    # entropy reads probabilities: one backbone pass per scored candidate per query
    scored = np.load(out / "scores.npz")["step"]
    assert len(scored) > 0
    assert compute["score_samples"] == len(scored)
    for r in rounds:
        assert r["score_samples"] == int((scored == r["step"]).sum())
    assert compute["pretrain_samples"] == 0 and compute["pretrain_s"] == 0.0
    # the seconds agree with the existing timings, which stay as they were
    for key in ("train_s", "score_s", "eval_s", "total_s"):
        assert compute[key] == pytest.approx(results["timings"][key])
    assert compute["train_s"] > 0 and compute["score_s"] > 0


def test_full_baseline_trains_every_image_every_epoch_and_scores_nothing(tmp_path):
    results, _, _ = _run(tmp_path, "full", *TWO_BY_TWO, "--policy", "full")
    assert results["train_size"] == DIGITS_LT_TRAIN
    assert results["compute"]["train_samples"] == 2 * 2 * DIGITS_LT_TRAIN
    assert results["compute"]["score_samples"] == 0  # the whole split taken: nothing scored


def test_linear_two_by_two_trains_the_subset_of_each_epoch(tmp_path):
    results, rounds, out = _run(tmp_path, "linear", *TWO_BY_TWO, "--policy", "linear")
    sizes = _subset_sizes_per_epoch(out, rounds)
    assert len(sizes) == 4 and sizes[-1] == DIGITS_LT_TRAIN  # the last round: the full split
    assert results["compute"]["train_samples"] == sum(sizes)
    assert sum(r["subset_size"] * r["epochs"] for r in rounds) == sum(sizes)


def test_head_mode_mc_counts_one_backbone_pass_per_candidate(tmp_path):
    results, _, out = _run(
        tmp_path, "mchead", *SCORED, "--estimator", "mcdropout", "--mc-samples", "3"
    )
    scored = len(np.load(out / "scores.npz")["step"])
    assert scored > 0
    assert results["compute"]["score_samples"] == scored


def test_random_estimator_scores_nothing(tmp_path):
    results, rounds, out = _run(tmp_path, "random", *SCORED, "--estimator", "random")
    assert len(np.load(out / "scores.npz")["step"]) > 0  # candidates scored, no pass needed
    assert results["compute"]["score_samples"] == 0
    assert results["compute"]["train_samples"] == sum(_subset_sizes_per_epoch(out, rounds))


def test_full_mode_mc_counts_one_backbone_pass_per_draw(tmp_path):
    results, _, out = _run(
        tmp_path,
        "mcfull",
        *SCORED,
        "--estimator",
        "mcdropout",
        "--mc-mode",
        "full",
        "--mc-samples",
        "3",
    )
    scored = len(np.load(out / "scores.npz")["step"])
    assert scored > 0
    assert results["compute"]["score_samples"] == 3 * scored


def test_ssl_samples_by_hand():
    assert ssl_samples(10, 3, 4) == 2 * 10 * 3  # batches 4, 4, 2
    assert ssl_samples(9, 2, 4) == 2 * 8 * 2  # the lone ninth image is skipped each epoch
    assert ssl_samples(9, 2, 64) == 2 * 9 * 2  # one batch of all nine
    assert ssl_samples(1, 5, 4) == 0 and ssl_samples(10, 0, 4) == 0


# --- bench.csv, summary.md, summary.png -----------------------------------------------------


def _cell(out: Path, method: str, seed: int, acc: float, compute: dict | None) -> Cell:
    config = {
        "dataset": "d",
        "imbalance_ratio": 100.0,
        "seed": seed,
        "policy": "full" if method.startswith("baseline:") else "linear",
    }
    key = config_hash(config, "0.1.0")
    name = f"seed{seed}-{key[:10]}"  # the folder its cell.json names
    path = out / "d-r100" / method.replace(":", "-").replace("/", "-") / name
    path.mkdir(parents=True)
    results: dict = {"test": {"balanced_accuracy": acc}}
    if compute is not None:
        results["compute"] = compute
    (path / RESULTS).write_text(json.dumps(results))
    doc = {
        "format": 1,
        "status": "finished",
        "method": method,
        "baseline": method.startswith("baseline:"),
        "config_hash": key,
        "flexsample_version": "0.1.0",
        "config": config,
        "wall_s": 1.0,
    }
    (path / CELL_FILE).write_text(json.dumps(doc))
    return Cell(method, doc["baseline"], RunConfig(), path, key)


def _compute(train: int, score: int) -> dict:
    return {
        "train_samples": train,
        "score_samples": score,
        "pretrain_samples": 0,
        "train_s": 2.5,
        "score_s": 0.5,
        "pretrain_s": 0.0,
        "eval_s": 0.1,
    }


def test_bench_columns_summary_column_and_pareto_panel(tmp_path):
    cells = [
        _cell(tmp_path, "entropy/linear", 0, 0.80, _compute(600, 150)),
        _cell(tmp_path, "entropy/linear", 1, 0.82, _compute(700, 160)),
        _cell(tmp_path, "baseline:ce", 0, 0.78, _compute(1016, 0)),
        _cell(tmp_path, "baseline:ce", 1, 0.76, _compute(1016, 0)),
        _cell(tmp_path, "old/linear", 0, 0.70, None),  # a cell from before `compute`
    ]
    write_summary(tmp_path, cells, "flexsample bench --test")
    with open(tmp_path / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS
    assert set(COMPUTE_COLUMNS) <= set(CSV_COLUMNS)
    got = {(r["method"], r["seed"]): r for r in rows}
    e0 = got[("entropy/linear", "0")]
    assert (e0["train_samples"], e0["score_samples"], e0["pretrain_samples"]) == ("600", "150", "0")
    assert e0["train_s"] == "2.500000" and e0["score_s"] == "0.500000"
    old = got[("old/linear", "0")]
    assert all(old[k] == "" for k in COMPUTE_COLUMNS)
    md = (tmp_path / "summary.md").read_text()
    assert "| best val bal-acc | train samples |" in md
    assert "| 1 | entropy/linear | 2 | 81.0 ± 1.4 | - | - | - | - | 650 |" in md
    assert "| 2 | baseline:ce ★ | 2 | 77.0 ± 1.4 | - | - | - | - | 1,016 |" in md
    assert "| 3 | old/linear | 1 | 70.0 | - | - | - | - | - |" in md
    png = tmp_path / "summary.png"
    assert png.stat().st_size > 0
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[1] > 1800  # three panels wide at 100 dpi


def test_resumed_run_reports_the_compute_of_its_recorded_steps(tmp_path, monkeypatch):
    from flexsample.engine import faults

    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "query:interrupt@1")  # after step 1's scoring, no checkpoint
    out = tmp_path / "resumed"
    cli = Cli()
    res = cli("run", *BASE, *SCORED, "--estimator", "entropy", "--out", out)
    assert res.exit_code == 130, res.output
    monkeypatch.delenv(faults.ENV)
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert results["compute"]["train_samples"] == sum(_subset_sizes_per_epoch(out, rounds))
    assert results["compute"]["score_samples"] == len(np.load(out / "scores.npz")["step"]) > 0


@pytest.mark.needs("lightly")
def test_ssl_init_counts_its_pre_training_also_after_a_resume(tmp_path, monkeypatch):
    from flexsample.engine import faults

    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "train-epoch:interrupt@3")  # checkpoint of epoch 2 kept
    out = tmp_path / "ssl"
    cli = Cli()
    flags = [*TWO_BY_TWO, "--policy", "full", "--init", "ssl", "--ssl-epochs", "1"]
    res = cli("run", *BASE, *flags, "--out", out)
    assert res.exit_code == 130, res.output
    monkeypatch.delenv(faults.ENV)
    res = cli("run", "--out", out, "--resume", "--quiet")  # no second pre-training
    assert res.exit_code == 0, res.output
    compute = json.loads((out / "results.json").read_text())["compute"]
    # digits-lt's 8 px images on a CPU get the largest SSL batch, 256 > 254 images: one batch
    assert compute["pretrain_samples"] == 2 * DIGITS_LT_TRAIN * 1
    assert compute["pretrain_s"] > 0  # measured before the interrupt, kept by the checkpoint
    assert compute["train_samples"] == 2 * 2 * DIGITS_LT_TRAIN
