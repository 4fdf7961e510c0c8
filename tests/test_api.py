"""The notebook API: `flexsample.run` / `flexsample.bench` behave like the CLI, quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flexsample
from flexsample import FlexsampleError, RunConfig, RunResult
from flexsample.engine.loop import Callback, StepRecord

from .conftest import one_error_line

TINY = {"rounds": 3, "epochs_per_round": 2, "device": "cpu"}


def cli_message(cli, *args: str) -> str:
    """The one stderr line of a failing `flexsample` command, without its 'error: ' prefix."""
    return one_error_line(cli(*args)).removeprefix("error: ")


def test_run_matches_the_cli_run_and_reads_back_its_folder(tiny_run, tmp_path, capsys):
    steps: list[StepRecord] = []

    class Steps(Callback):
        def on_step_end(self, record: StepRecord) -> None:
            steps.append(record)

    res = flexsample.run(**TINY, out=tmp_path / "api", callbacks=[Steps()])
    assert capsys.readouterr() == ("", "")  # quiet by default
    assert isinstance(res, RunResult) and res.run_dir == tmp_path / "api"
    saved = json.loads((res.run_dir / "results.json").read_text())
    assert res.results == saved
    assert res.test == saved["test"] and res.test_last == saved["test_last"]
    lines = (res.run_dir / "rounds.jsonl").read_text().splitlines()
    assert res.rounds == [json.loads(line) for line in lines]
    assert [r["subset_size"] for r in res.rounds] == [s.subset_size for s in steps]
    # the same settings through the CLI (the tiny_run fixture) give the same model
    cli_results = json.loads((tiny_run / "results.json").read_text())
    assert res.test == cli_results["test"]
    assert [r["class_counts"] for r in res.rounds] == [
        json.loads(line)["class_counts"]
        for line in (tiny_run / "rounds.jsonl").read_text().splitlines()
    ]
    assert res.config == RunConfig(**TINY)

    again = flexsample.run(out=res.run_dir, resume=True)
    assert again.already_finished and again.results == res.results
    assert again.rounds == res.rounds
    assert capsys.readouterr() == ("", "")


def test_progress_prints_plain_lines(tmp_path, capsys):
    flexsample.run(rounds=1, epochs_per_round=2, device="cpu", out=tmp_path / "r", progress=True)
    out = capsys.readouterr().out
    assert "epoch 1/2: loss " in out and "epoch 2/2: loss " in out
    assert "step 0: " in out and "evaluation done in " in out
    assert "\x1b[" not in out  # no terminal control codes


@pytest.mark.parametrize(
    ("overrides", "flags"),
    [
        ({"rounds": 0}, ["--rounds", "0"]),
        ({"estimator": "nope"}, ["--estimator", "nope"]),
        ({"dataset": "nope"}, ["--dataset", "nope"]),
        ({"query_ratio": float("nan")}, ["--query-ratio", "nan"]),
    ],
)
def test_bad_values_raise_the_cli_line(cli, tmp_path, overrides, flags):
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(out=tmp_path / "r", **overrides)
    assert str(err.value) == cli_message(cli, "run", "--out", tmp_path / "c", *flags)
    assert not (tmp_path / "r").exists()


def test_config_file_dict_and_runconfig_resolve_like_the_cli(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 7\nepochs-per-round: 3\nestimator: entropy\n")
    printed = json.loads(cli("run", "--config", cfg, "--rounds", "4", "--print-config").stdout)
    from flexsample.workflows.api import resolve

    assert resolve(cfg, {"rounds": 4}).model_dump() == printed
    assert resolve(str(cfg), {"rounds": 4}).model_dump() == printed
    as_dict = {"rounds": 7, "epochs-per-round": 3, "estimator": "entropy"}
    assert resolve(as_dict, {"rounds": 4}).model_dump() == printed
    assert resolve(
        RunConfig(rounds=7, epochs_per_round=3, estimator="entropy"), {"rounds": 4}
    ) == RunConfig.model_validate(printed)

    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 0\n")
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(bad, out=tmp_path / "r")
    assert str(err.value) == cli_message(cli, "run", "--config", bad, "--out", tmp_path / "r")
    with pytest.raises(FlexsampleError, match=r"invalid --rounds = 0 in the config dict"):
        flexsample.run({"rounds": 0})
    with pytest.raises(FlexsampleError, match=r"unknown key 'bogus' in the command line"):
        flexsample.run(bogus=1)
    with pytest.raises(FlexsampleError, match=r"config must be a RunConfig, a dict or the path"):
        flexsample.run(42)


def test_out_resume_and_overwrite_checks_match_the_cli(cli, tiny_run, tmp_path):
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(out=tmp_path / "x", resume=True, overwrite=True)
    assert str(err.value) == cli_message(
        cli, "run", "--out", tmp_path / "x", "--resume", "--overwrite"
    )
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(resume=True)
    assert str(err.value) == cli_message(cli, "run", "--resume")
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(out=tiny_run, resume=True, rounds=4)
    assert str(err.value) == cli_message(cli, "run", "--out", tiny_run, "--resume", "--rounds", "4")
    with pytest.raises(FlexsampleError) as err:  # an existing run is not replaced silently
        flexsample.run(**TINY, out=tiny_run)
    assert str(err.value) == cli_message(
        cli,
        "run",
        "--rounds",
        "3",
        "--epochs-per-round",
        "2",
        "--device",
        "cpu",
        "--out",
        tiny_run,
    )


def test_bench_runs_a_grid_and_checks_names_first(cli, tmp_path, capsys):
    out = tmp_path / "b"
    res = flexsample.bench(
        {"rounds": 1, "epochs_per_round": 1, "device": "cpu"},
        out=out,
        estimators=["entropy", "margin"],
    )
    assert capsys.readouterr() == ("", "")
    assert sorted(c.config.estimator for c in res.cells) == ["entropy", "margin"]
    assert not res.failed and res.out == out
    with open(out / "bench.csv") as fh:
        assert sum(1 for _ in fh) == 1 + 2  # header + one row per cell
    again = flexsample.bench(
        {"rounds": 1, "epochs_per_round": 1, "device": "cpu"}, out=out, estimators="entropy"
    )
    assert [c.config.estimator for c in again.skipped] == ["entropy"]  # reused, not rerun

    with pytest.raises(FlexsampleError) as err:
        flexsample.bench(out=tmp_path / "c", estimators=["entropy", "nope"])
    assert str(err.value) == cli_message(
        cli, "bench", "--out", tmp_path / "d", "--estimators", "entropy,nope"
    )
    with pytest.raises(FlexsampleError) as err:
        flexsample.bench(out=tmp_path / "c", rounds=0)
    assert str(err.value) == cli_message(cli, "bench", "--out", tmp_path / "d", "--rounds", "0")
    assert not (tmp_path / "c").exists()


def test_import_flexsample_stays_torch_free():
    """`import flexsample` and the RunConfig class stay light; building a config checks each
    chosen component's options, which the components themselves declare (and they import
    torch)."""
    code = (
        "import sys, flexsample\n"
        "flexsample.RunConfig\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    assert out.stdout.strip() == "[]"


def test_run_and_bench_log_to_trackers(tmp_path):
    import csv as csv_module

    import flexsample

    res = flexsample.run(
        out=tmp_path / "r", rounds=2, epochs_per_round=1, device="cpu", log_to="csv"
    )
    with open(res.run_dir / "logs" / "test.csv", encoding="utf-8") as fh:
        assert list(csv_module.DictReader(fh))
    grid = flexsample.bench(
        {"rounds": 2, "epochs_per_round": 1, "device": "cpu", "estimator": "random"},
        out=tmp_path / "b",
        log_to=["csv"],
        log_dir=tmp_path / "logs",
    )
    assert not grid.failed
    assert len(list((tmp_path / "logs" / "b").glob("*/test.csv"))) == 1
    with pytest.raises(flexsample.FlexsampleError, match="unknown tracker 'excel'"):
        flexsample.run(out=tmp_path / "x", log_to="excel")
    assert not (tmp_path / "x").exists()
