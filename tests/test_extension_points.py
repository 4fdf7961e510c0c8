"""Trackers and launchers are open extension points (issue 20): a package that is *installed*
(a dist-info folder on PYTHONPATH, found by importlib.metadata as pip's would be) adds a tracker
through the entry-point group `flexsample.trackers` and a launcher through
`flexsample.launchers`; `flexsample run --log-to` and `flexsample bench --launcher` use them end
to end, in real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DIST = "fs_ext_demo"
TRACKER = "demo-file"
LAUNCHER = "demo-inline"
SHORT = ["--rounds", "2", "--epochs-per-round", "1", "--quiet", "--device", "cpu"]

PACKAGE = '''
"""A third-party tracker and launcher (a test package)."""

import json
from pathlib import Path
from typing import Annotated

from flexsample.engine.options import opt
from flexsample.engine.registries import LAUNCHERS, TRACKERS
from flexsample.integrations.trackers import Tracker
from flexsample.workflows.launchers import Launcher


@TRACKERS.register("demo-file")
class FileTracker(Tracker):
    """Writes one JSON line per epoch and one at the run's end."""

    def __init__(self, tag: Annotated[str, opt("written on every line")] = "demo", **runtime):
        super().__init__(**runtime)
        self.tag = tag

    def _write(self, doc):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "demo-tracker.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"tag": self.tag, **doc}) + "\\n")

    def _log_metrics(self, section, epoch, metrics):
        if section == "epoch":
            self._write({"event": "epoch", "epoch": epoch})

    def _log_final(self, metrics):
        self._write({"event": "end", "test": metrics.get("test/balanced_accuracy")})


@LAUNCHERS.register("demo-inline")
class InlineLauncher(Launcher):
    """Runs each cell in this process, at once, and records it."""

    def __init__(self, record: Annotated[str, opt("file under --out")] = "launched.txt", out=None):
        self.path = Path(out) / record

    def submit(self, tasks):
        from flexsample.workflows.bench import cell_entry

        outcomes = []
        for task in tasks:
            outcome = cell_entry(task)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"out": task.out, "ok": outcome.ok}) + "\\n")
            outcomes.append(outcome)
        return outcomes

    def poll(self, job):
        return job

    def cancel(self, jobs):
        pass
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and its dist-info (METADATA, entry_points.txt) in one folder."""
    root = tmp_path_factory.mktemp("site")
    (root / f"{DIST}.py").write_text(PACKAGE, encoding="utf-8")
    info = root / f"{DIST}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[flexsample.trackers]\n{TRACKER} = {DIST}\n\n"
        f"[flexsample.launchers]\n{LAUNCHER} = {DIST}\n",
        encoding="utf-8",
    )
    return root


def flexsample(site: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "flexsample", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


def error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_installed_tracker_logs_a_run(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = flexsample(installed, "run", *SHORT, "--log-to", f"csv,{TRACKER}", "--out", out)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in (out / "demo-tracker.jsonl").read_text().splitlines()]
    assert [d["event"] for d in lines] == ["epoch", "epoch", "end"]
    assert [d["epoch"] for d in lines[:2]] == [0, 1] and {d["tag"] for d in lines} == {"demo"}
    results = json.loads((out / "results.json").read_text())
    assert lines[-1]["test"] == pytest.approx(results["test"]["balanced_accuracy"])
    assert (out / "logs" / "test.csv").exists()  # the built-in next to it


def test_installed_launcher_runs_a_bench(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = flexsample(
        installed,
        "bench",
        "--out",
        out,
        *SHORT,
        "--launcher",
        LAUNCHER,
        "--estimators",
        "random",
        "--seeds",
        "0,1",
        "--log-to",
        TRACKER,
    )
    assert res.returncode == 0, res.stderr
    assert f"({LAUNCHER})" in res.stdout  # "2 cells, 0 already finished, 2 to run (demo-inline)"
    records = [json.loads(ln) for ln in (out / "launched.txt").read_text().splitlines()]
    assert len(records) == 2 and all(r["ok"] for r in records)
    for record in records:  # every cell ran, finished, and its tracker wrote its file
        cell = Path(record["out"])
        assert json.loads((cell / "cell.json").read_text())["status"] == "finished"
        assert (cell / "demo-tracker.jsonl").read_text().count('"end"') == 1
    assert (out / "bench.csv").exists()


def test_a_flag_the_launcher_does_not_declare_is_refused(installed: Path, tmp_path: Path) -> None:
    for flag, value, takers in (
        ("--jobs", "2", "local"),
        ("--partition", "gpu", "slurm"),
        ("--cpus-per-cell", "2", "local or ray or slurm"),
    ):
        line = error_line(
            flexsample(
                installed,
                "bench",
                "--out",
                tmp_path / "b",
                *SHORT,
                "--launcher",
                LAUNCHER,
                flag,
                value,
            )
        )
        assert f"{flag} applies to --launcher {takers}, not {LAUNCHER}" in line
    assert not (tmp_path / "b").exists()


def test_unknown_names_list_the_installed_ones(installed: Path, tmp_path: Path) -> None:
    line = error_line(
        flexsample(installed, "run", *SHORT, "--log-to", "neptune", "--out", tmp_path / "r")
    )
    assert "unknown tracker 'neptune'" in line
    assert f"accepted: csv, {TRACKER}, mlflow, tensorboard, wandb" in line
    line = error_line(
        flexsample(installed, "bench", "--out", tmp_path / "b", *SHORT, "--launcher", "mpi")
    )
    assert f"unknown --launcher 'mpi'; accepted: {LAUNCHER}, local, ray, slurm" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()


def test_python_api_applies_the_cli_launcher_rules(tmp_path: Path) -> None:
    from flexsample import FlexsampleError
    from flexsample.workflows.bench import run_bench
    from flexsample.workflows.config import RunConfig

    base = RunConfig(rounds=2, epochs_per_round=1, device="cpu")
    for kwargs, message in (
        ({"launcher_options": {"partition": "gpu"}}, "--partition applies to --launcher slurm"),
        ({"launcher": "ray", "cells_per_gpu": 2}, "--cells-per-gpu applies to --launcher local"),
        ({"launcher": "mpi"}, "unknown --launcher 'mpi'; accepted: "),
        ({"jobs": 0}, "--jobs 0 is out of range"),
    ):
        with pytest.raises(FlexsampleError, match=message):
            run_bench(base, tmp_path / "b", **kwargs)
    assert not (tmp_path / "b").exists()


def test_list_shows_the_installed_tracker_and_launcher(installed: Path) -> None:
    res = flexsample(installed, "list")
    assert res.returncode == 0, res.stderr
    rows = [ln.split()[:2] for ln in res.stdout.splitlines()]
    assert ["tracker", TRACKER] in rows and ["launcher", LAUNCHER] in rows
    assert ["tracker", "csv"] in rows and ["launcher", "slurm"] in rows


def test_a_tracker_from_a_plugin_module_logs_a_run(tmp_path: Path) -> None:
    """--plugin imports its module before the tracker names are checked (it was refused as
    an unknown tracker: the names were checked first)."""
    site = tmp_path / "plain"
    site.mkdir()
    (site / f"{DIST}.py").write_text(PACKAGE, encoding="utf-8")  # no dist-info: not installed
    out = tmp_path / "run"
    res = flexsample(
        site, "run", *SHORT, "--plugin", DIST, "--log-to", TRACKER, "--out", out, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    events = [
        json.loads(ln)["event"] for ln in (out / "demo-tracker.jsonl").read_text().splitlines()
    ]
    assert events == ["epoch", "epoch", "end"]
