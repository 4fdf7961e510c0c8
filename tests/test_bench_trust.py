"""`flexsample bench` results that can be trusted (issue 8): cells keyed on their config hash,
a summary over every finished cell, no "± 0.0" for one seed, no half cell ever reported, and
workers that die with the bench process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flexsample.engine import faults
from flexsample.workflows.bench import CELL_FILE, CellRecord, config_hash, read_cell
from flexsample.workflows.bench_summary import error_bars, summarise, varying_flags
from flexsample.workflows.config import RunConfig

TINY_CELL = ["--epochs-per-round", "1", "--device", "cpu", "--estimator", "random"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bench(cli, out: Path, *args: str, rounds: int = 2):
    return cli("bench", "--out", out, "--rounds", str(rounds), *TINY_CELL, *args)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "bench.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cell_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("results.json"))


def table_lines(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]


def bench_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flexsample", "bench", "--out", str(out), *TINY_CELL, *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


# --- cells keyed on their configuration ------------------------------------------------------


def test_other_flags_never_reuse_a_finished_cell(cli, tmp_path):
    out = tmp_path / "b"
    res = bench(cli, out, rounds=2)
    assert res.exit_code == 0, res.output
    [first] = cell_dirs(out)
    cell = json.loads((first / CELL_FILE).read_text())
    assert cell["status"] == "finished"
    assert cell["config"]["rounds"] == 2
    assert cell["config_hash"] == config_hash(RunConfig.model_validate(cell["config"]))
    assert first.name == f"seed0-{cell['config_hash'][:10]}"

    # the same grid with other --rounds: a new cell in its own folder, the old one kept
    res = bench(cli, out, rounds=3)
    assert res.exit_code == 0, res.output
    assert "1 cells, 0 already finished, 1 to run" in res.stdout
    assert len(cell_dirs(out)) == 2
    table = rows(out)
    assert len(table) == 2
    by_rounds = {r["rounds"]: r for r in table}  # the flag that differs is a column
    assert set(by_rounds) == {"2", "3"}
    assert by_rounds["3"]["in_grid"] == "yes" and by_rounds["2"]["in_grid"] == "no"
    assert by_rounds["2"]["config_hash"] != by_rounds["3"]["config_hash"]
    md = (out / "summary.md").read_text()
    lines = table_lines(md)
    assert len(lines) == 2  # one row per configuration, not one mixed "random/linear"
    assert "| rounds |" in md
    assert any("†" in ln and "| 2 |" in ln for ln in lines)

    # asking for the first configuration again reuses it
    res = bench(cli, out, rounds=2)
    assert "1 cells, 1 already finished, 0 to run" in res.stdout

    # a cell.json edited to say another config ran than its hash describes is no result
    assert read_cell(first) is not None
    cell["config"]["rounds"] = 5
    (first / CELL_FILE).write_text(json.dumps(cell))
    assert read_cell(first) is None
    res = bench(cli, out, rounds=2)
    assert "1 cells, 0 already finished, 1 to run" in res.stdout
    assert read_cell(first) is not None


def test_single_seed_shows_no_spread(cli, tmp_path):
    out = tmp_path / "b"
    res = bench(cli, out, "--baselines", "ce", "--estimators", "random")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    lines = table_lines(md)
    assert len(lines) == 2
    for ln in lines:
        assert "±" not in ln, ln
        assert ln.split("|")[3].strip() == "1"  # the seeds column


def _entry(values: list[float]) -> dict:
    rs = [
        {"dataset": "d", "imbalance_ratio": 1.0, "method": "m", "test_balanced_accuracy": v}
        for v in values
    ]
    for r in rs:
        r.update(head=None, medium=None, tail=None, best_val_balanced_accuracy=None)
    return summarise(rs)[0]


def test_error_bars_only_with_several_seeds():
    one, two = _entry([0.5]), _entry([0.4, 0.6])
    assert one["test_balanced_accuracy"] == (0.5, None)
    assert error_bars([one, two]) == [(1, pytest.approx(100 * 0.1414213, rel=1e-5))]


def _record(method: str, **config) -> CellRecord:
    cfg = {"dataset": "d", "imbalance_ratio": 1.0, "seed": 0, "rounds": 5, "lr": 0.1, **config}
    return CellRecord(method, False, cfg, "h", "0.1.0", {}, Path("."))


def test_varying_flags_tell_configurations_of_one_method_apart():
    recs = [
        _record("a", rounds=5, seed=0),
        _record("a", rounds=2, seed=1),
        _record("b", lr=0.5, seed=2),  # differs from "a" only: not a distinguishing flag
        _record("b", lr=0.5, dataset="e"),
    ]
    assert varying_flags(recs) == ["rounds"]
    recs.append(CellRecord("b", False, {**recs[-1].config}, "h", "0.2.0", {}, Path(".")))
    assert varying_flags(recs) == ["rounds", "flexsample_version"]


# --- no half cell taken as finished ----------------------------------------------------------


def test_killed_cell_is_rerun_not_reported(cli, tmp_path):
    out = tmp_path / "b"
    env = subprocess_env(**{faults.ENV: "bench-cell:kill@2"})
    cmd = bench_cmd(out, "--rounds", "2", "--seeds", "0,1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the second cell wrote results.json, then died before it was marked finished
    assert len(cell_dirs(out)) == 2
    assert sum(read_cell(d) is not None for d in cell_dirs(out)) == 1
    res = bench(cli, out, "--seeds", "0,1")
    assert res.exit_code == 0, res.output
    assert "2 cells, 1 already finished, 1 to run" in res.stdout
    assert len(rows(out)) == 2


def test_failed_cell_is_one_line_recorded_and_rerun(cli, tmp_path, monkeypatch):
    out = tmp_path / "b"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "bench-cell:disk-full")
    res = bench(cli, out, "--retries", "0")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    assert "1 of 1 cells failed" in lines[0]
    assert "cell random/linear seed 0" in lines[0] and "No space left" in lines[0]
    (row,) = rows(out)
    assert row["status"] == "failed" and "No space left" in row["error"]
    assert row["test_balanced_accuracy"] == ""
    monkeypatch.delenv(faults.ENV)
    res = bench(cli, out)
    assert res.exit_code == 0, res.output
    assert "1 cells, 0 already finished, 1 to run" in res.stdout
    (row,) = rows(out)
    assert row["status"] == "finished"


def test_a_transient_failure_is_retried(cli, tmp_path, monkeypatch):
    """The fault fires once: the default single retry finishes the cell, exit 0."""
    out = tmp_path / "b"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "bench-cell:disk-full")
    res = bench(cli, out)
    assert res.exit_code == 0, res.output
    assert "retried 1" in res.stdout
    assert [r["status"] for r in rows(out)] == ["finished"]


def test_interrupt_keeps_finished_cells_exit_130(cli, tmp_path, monkeypatch):
    out = tmp_path / "b"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "bench-cell:interrupt@2")
    res = bench(cli, out, "--seeds", "0,1")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 130, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    assert "interrupted" in lines[0] and "1 of 2 cells finished" in lines[0]
    monkeypatch.delenv(faults.ENV)
    res = bench(cli, out, "--seeds", "0,1")
    assert "2 cells, 1 already finished, 1 to run" in res.stdout


# --- workers die with the bench process ------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _start_parallel_bench(out: Path, finished: bool) -> tuple[subprocess.Popen, list[int]]:
    """A --jobs 2 bench with queued cells, once both workers run and a cell has started (or,
    with `finished`, one has finished)."""
    cmd = bench_cmd(out, "--rounds", "2", "--seeds", ",".join(map(str, range(10))), "--jobs", "2")
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 90
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        if len(workers) == 2 and any(out.rglob(CELL_FILE) if finished else out.glob("*/*/*")):
            return proc, workers
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"bench workers did not start: {proc.communicate()[1]}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_workers_die_with_a_killed_bench(tmp_path):
    out = tmp_path / "b"
    proc, workers = _start_parallel_bench(out, finished=False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_gone(workers, 5) == [], "bench workers outlived their parent"
    done = len(list(out.rglob(CELL_FILE)))
    time.sleep(1)
    assert len(list(out.rglob(CELL_FILE))) == done < 10  # no queued cell ran afterwards


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_ctrl_c_stops_a_parallel_bench(tmp_path):
    out = tmp_path / "b"
    proc, workers = _start_parallel_bench(out, finished=True)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert _wait_gone(workers, 5) == []
    finished = [d for d in cell_dirs(out) if read_cell(d) is not None]
    assert f"{len(finished)} of 10 cells finished" in lines[0]
    assert 0 < len(finished) < 10


def test_watchdog_exits_a_worker_whose_parent_died(tmp_path):
    """The portable half (no prctl): the watch thread alone ends an orphaned worker."""
    ready = tmp_path / "ready"
    child = textwrap.dedent(
        f"""
        import os, sys, time
        from flexsample.workflows.launchers.local import die_with_parent
        # after the import (pydantic's import reads sys.platform), read at the call:
        sys.platform = "portable-test"  # skip prctl: test the watch thread alone
        die_with_parent(os.getppid(), 0.05)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
        """
    )
    parent = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {child!r}])
        print(p.pid, flush=True)
        while not os.path.exists({str(ready)!r}):
            time.sleep(0.05)
        os._exit(0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=60
    )
    pid = int(proc.stdout.split()[0])
    assert _wait_gone([pid], 5) == [], "the orphaned worker kept running"
