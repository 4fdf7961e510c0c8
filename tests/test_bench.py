"""`flexsample bench`: the grid, the three outputs, resumability, bad input."""

from __future__ import annotations

import csv

import pytest

from flexsample.workflows.bench_summary import CSV_COLUMNS, summarise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GRID = [
    "bench",
    "--estimators",
    "entropy,random",
    "--policies",
    "linear,full",
    "--seeds",
    "0,1",
    "--rounds",
    "2",
    "--epochs-per-round",
    "1",
    "--device",
    "cpu",
]


def test_grid_outputs_and_resume(cli, tmp_path):
    out = tmp_path / "b"
    res = cli(*GRID, "--baselines", "ce", "--out", out)
    assert res.exit_code == 0, res.output
    assert {"bench.csv", "summary.md", "summary.png"} <= {p.name for p in out.iterdir()}
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2 + 2
    methods = {r["method"] for r in rows}
    assert methods == {
        "entropy/linear",
        "entropy/full",
        "random/linear",
        "random/full",
        "baseline:ce",
    }
    assert all(0 <= float(r["test_balanced_accuracy"]) <= 1 for r in rows)
    assert {r["seed"] for r in rows} == {"0", "1"}
    md = (out / "summary.md").read_text()
    assert "baseline:ce ★" in md and "entropy/linear" in md
    # a second invocation finds every cell finished and only re-summarises
    res = cli(*GRID, "--baselines", "ce", "--out", out)
    assert res.exit_code == 0, res.output
    assert "10 already finished, 0 to run" in res.stdout


def test_passthrough_flags_reach_every_cell(cli, tmp_path):
    import json

    out = tmp_path / "b"
    res = cli(
        "bench",
        "--seeds",
        "3",
        "--estimators",
        "mcdropout",  # an estimator that takes --mc-samples: the flag reaches its section
        "--rounds",
        "2",
        "--epochs-per-round",
        "1",
        "--mc-samples",
        "5",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads(next(out.rglob("config.json")).read_text())["config"]
    assert cfg["estimator_options"]["mc_samples"] == 5 and cfg["seed"] == 3 and cfg["rounds"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--baselines", "magic"], "unknown baseline 'magic'"),
        (["--estimators", "nope"], "unknown estimator 'nope'"),
        (["--seeds", "a,b"], "--seeds 'a,b' must be a comma-separated list of int"),
        (["--rounds", "0"], "--rounds"),
        (["--out", "x", "--overwrite"], "drop --overwrite"),
    ],
)
def test_bad_input(cli, tmp_path, args, expected):
    res = cli("bench", "--out", tmp_path / "b", *args)
    assert res.exit_code == 2, res.output
    assert expected in res.stderr
    assert not (tmp_path / "b" / "bench.csv").exists()


def test_summary_ranks_by_mean():
    rows = [
        {
            "dataset": "d",
            "imbalance_ratio": 100.0,
            "method": m,
            "test_balanced_accuracy": v,
            "head": 1.0,
            "medium": 0.5,
            "tail": None,
            "best_val_balanced_accuracy": v,
        }
        for m, v in [("a", 0.5), ("a", 0.7), ("b", 0.65), ("b", 0.65)]
    ]
    s = summarise(rows)
    assert [e["method"] for e in s] == ["b", "a"]
    assert s[1]["test_balanced_accuracy"][0] == pytest.approx(0.6)
    assert s[1]["test_balanced_accuracy"][1] == pytest.approx(0.1414213, rel=1e-5)
