"""Edges of `flexsample bench` (issue 23): two benches on one folder, copied cell folders and
edited results, the Slurm path never unpickling, ties and an estimator that never ran, and the
grid driver's helpers."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows import bench as bench_mod
from flexsample.workflows.bench import run_bench
from flexsample.workflows.config import build_config
from flexsample.workflows.launchers import Launcher, Outcome

from .conftest import one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CELL = ["--rounds", "2", "--epochs-per-round", "1", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


# --- 1. one bench per folder -------------------------------------------------------------------


class HeldLauncher(Launcher):
    """Runs nothing: its cells stay running until `release` is set (a bench mid-grid)."""

    name = "held"
    slots = None

    def __init__(self) -> None:
        self.submitted = threading.Event()
        self.release = threading.Event()

    def submit(self, tasks):
        self.submitted.set()
        return list(range(len(tasks)))

    def poll(self, job):
        if not self.release.is_set():
            return None
        return Outcome(False, error="held cell released", user_error=True)

    def cancel(self, jobs):
        self.release.set()


def test_a_second_bench_on_a_running_folder_is_one_line_and_touches_nothing(cli, tmp_path):
    out = tmp_path / "b"
    base = build_config([("test", {"rounds": 2, "epochs_per_round": 1, "device": "cpu"})])
    held = HeldLauncher()
    first = threading.Thread(
        target=run_bench, args=(base, out), kwargs={"launcher": held, "retries": 0}, daemon=True
    )
    first.start()
    try:
        assert held.submitted.wait(60), "the first bench never started its grid"
        before = snapshot(out)
        res = cli("bench", "--out", out, *TINY_CELL)
        line = one_error_line(res)
        assert line == (
            f"error: bench folder {out} is in use by another flexsample bench (pid "
            f"{os.getpid()} on {socket.gethostname()}); wait for it to finish, stop it, or "
            "choose another --out"
        )
        assert snapshot(out) == before  # nothing written, nothing overwritten
        assert not (out / "bench.csv").exists()
    finally:
        held.release.set()
        first.join(60)
    # once the first bench ended, the folder is free again
    with bench_mod.BenchLock.acquire(out):
        pass


def test_the_lock_of_a_dead_bench_never_blocks(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps(record))
    with bench_mod.BenchLock.acquire(out):  # flock: the kernel dropped the dead holder's lock
        assert json.loads((out / bench_mod.BENCH_LOCK).read_text())["pid"] == os.getpid()


def test_without_flock_the_holder_record_decides(tmp_path, monkeypatch):
    """A filesystem without flock (some NFS, Lustre mounts): a record of a pid gone from this
    host is stale and taken over; a live one, or one of another host, refuses."""
    out = tmp_path / "b"
    out.mkdir()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(bench_mod.fcntl, "flock", no_flock)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": host}))
    lock = bench_mod.BenchLock.acquire(out)
    assert json.loads((out / bench_mod.BENCH_LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / bench_mod.BENCH_LOCK).exists()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": alive.pid, "host": host}))
        with pytest.raises(FlexsampleError, match=rf"\(pid {alive.pid} on {host}\); wait"):
            bench_mod.BenchLock.acquire(out)
    finally:
        alive.kill()
        alive.wait()
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": 1234, "host": "elsewhere"}))
    with pytest.raises(FlexsampleError, match=r"\(pid 1234 on elsewhere\); if it no longer"):
        bench_mod.BenchLock.acquire(out)


# --- 5. the grid driver in readable helpers ----------------------------------------------------


def test_run_grid_is_within_the_complexity_limit():
    """ruff's C901 (max 15, pyproject) over the grid driver: run_grid was 19."""
    pytest.importorskip("ruff")
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "C901",
            "--output-format",
            "concise",
            "workflows/bench.py",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


class ScriptedLauncher(Launcher):
    """Outcomes by cell and attempt; one cell already running from an earlier driver."""

    name = "scripted"
    slots = 1

    def __init__(self, outcomes, alive=(), wait=True):
        self.outcomes = outcomes  # (method, attempt) -> ok
        self.alive = set(alive)
        self.wait = wait
        self.log: list[str] = []

    @property
    def waits(self):
        return self.wait

    def attach(self, tasks):
        return [("old", t) if t.method in self.alive else None for t in tasks]

    def submit(self, tasks):
        self.log += [f"submit {t.method} {t.attempt}" for t in tasks]
        return [("new", t) for t in tasks]

    def poll(self, job):
        _, task = job
        if self.outcomes[(task.method, task.attempt)]:
            Path(task.out).mkdir(parents=True, exist_ok=True)
            return Outcome(True, results={})  # no cell.json: "finished but missing"
        return Outcome(False, error=f"{task.method} failed", where="here")

    def cancel(self, jobs):
        self.log.append("cancel")


def test_run_grid_retries_reattaches_and_returns_without_waiting(tmp_path):
    from flexsample.workflows.bench import Cell, run_grid

    cfg = build_config([("test", {"device": "cpu"})])
    cells = [Cell(m, False, cfg, tmp_path / m) for m in ("a", "b", "c")]
    launcher = ScriptedLauncher({(m, a): False for m in "abc" for a in (1, 2)}, alive={"b"})
    events = []
    report = run_grid(
        cells,
        launcher,
        retries=1,
        on_progress=lambda p: events.append(
            (p.event, p.cell.method if p.cell else None, p.running)
        ),
        poll_interval=0,
    )
    assert [c.method for c, _ in report.failed] == ["b", "a", "c"]
    assert [o.error for _, o in report.failed] == ["b failed", "a failed", "c failed"]
    assert launcher.log == ["submit a 1", "submit c 1", "submit b 2", "submit a 2", "submit c 2"]
    assert events[:3] == [("start", "b", 1), ("retry", "b", 0), ("start", "a", 1)]
    assert [e for e, _, _ in events].count("retry") == 3
    assert json.loads((tmp_path / "a" / "cell.json").read_text())["attempts"] == 2

    launcher = ScriptedLauncher({}, wait=False)
    report = run_grid(cells, launcher, retries=1)
    assert [c.method for c in report.pending] == ["a"] and not report.failed


# --- 3. the Slurm path never unpickles ----------------------------------------------------------


class Planted:
    """A pickle that writes a marker file when loaded: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


@pytest.mark.needs("submitit")
def test_slurm_reads_outcomes_from_json_and_never_unpickles_a_planted_file(tmp_path):
    import pickle

    from flexsample.workflows.launchers import CellTask
    from flexsample.workflows.launchers import slurm as slurm_mod

    out, marker = tmp_path / "b", tmp_path / "marker"
    launcher = slurm_mod.SlurmLauncher(out=out, cluster="local", cpus_per_cell=1)
    bad = {"rounds": -1}  # refused by the cell's own validation: a quick job
    task = CellTask(bad, str(out / "cell"), "random/linear", False, "k" * 64, "random seed 0")
    launcher.start([task])
    [job] = launcher.submit([task])
    deadline = time.monotonic() + 300
    while job.get_info()["jobState"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    # someone who can write under --out replaces the job's result pickle
    job.paths.result_pickle.write_bytes(pickle.dumps(Planted(marker)))
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        outcome = launcher.poll(job)
        time.sleep(0.2)
    launcher.close()
    assert not marker.exists(), "the driver unpickled a file from the bench folder"
    assert outcome is not None and not outcome.ok and outcome.user_error
    assert "--rounds -1" in outcome.error or "rounds" in outcome.error
    assert outcome.where.endswith(f"(local job {job.job_id})")
    # an earlier driver's job (reattached after --no-wait) is read the same way
    orphan = slurm_mod._LocalOrphan(launcher.folder / "%j", str(job.job_id))
    launcher._next_check.clear()
    again = launcher.poll(orphan)
    assert again is not None and again.error == outcome.error and not marker.exists()


def test_a_planted_result_without_an_outcome_record_is_not_a_result(tmp_path, monkeypatch):
    """A job whose folder has a result file but no outcome record is waited for while its
    state says it runs, and never read."""
    import pickle

    from flexsample.workflows.launchers import slurm as slurm_mod

    class Job:
        job_id = "7301_0"
        state = "RUNNING"

        def __init__(self, folder):
            from submitit.core.utils import JobPaths

            self.paths = JobPaths(folder, job_id=self.job_id, task_id=0)

        def done(self):
            return self.paths.result_pickle.exists()

    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm_mod.shutil, "which", lambda name: f"/bin/{name}")
    launcher = slurm_mod.SlurmLauncher(out=tmp_path / "b", cluster="slurm", time="1:00:00")
    job = Job(launcher.folder / "%j")
    job.paths.folder.mkdir(parents=True)
    marker = tmp_path / "marker"
    job.paths.result_pickle.write_bytes(pickle.dumps(Planted(marker)))
    assert launcher.poll(job) is None and not marker.exists()
    job.state = "FAILED"
    job.paths.stderr.write_text("Traceback (most recent call last):\nMemoryError: out of it\n")
    launcher._next_check.clear()
    outcome = launcher.poll(job)
    assert not marker.exists()
    assert outcome is not None and outcome.error == (
        "the slurm job 7301_0 ended (FAILED) before the cell finished (a time limit, memory, a "
        "node failure or a cancel): MemoryError: out of it; its log: "
        f"{job.paths.stderr}"
    )


# --- 2. copied cell folders and edited results -------------------------------------------------


def bench_csv(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "bench.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_copied_cells_and_edited_results_are_named_and_not_counted(cli, tmp_path):
    import shutil

    from flexsample.workflows.bench_summary import write_summary

    out = tmp_path / "b"
    grid = ["bench", "--out", out, "--estimators", "random", "--seeds", "1", *TINY_CELL]
    res = cli(*grid)
    assert res.exit_code == 0, res.output
    [cell] = [p.parent for p in out.rglob("cell.json")]
    doc = json.loads((cell / "cell.json").read_text())
    assert doc["format"] == 2 and len(doc["results_sha256"]) == 64

    # a copy of the cell folder is no second seed
    copy = cell.with_name(cell.name + "-copy")
    shutil.copytree(cell, copy)
    res = cli(*grid)
    assert res.exit_code == 0, res.output
    assert [r["cell"] for r in bench_csv(out)] == [str(cell.relative_to(out))]
    line = (
        f"{copy.relative_to(out)}: not counted: a copied or renamed cell folder (its cell.json "
        f"is the cell of folder {cell.name})"
    )
    md = (out / "summary.md").read_text()
    assert f"- {line}\n" in md
    assert "| 1 | random/linear ‡ | 1 |" in md  # one seed, not two
    shutil.rmtree(copy)

    # results.json reformatted (same content): still counted
    results = json.loads((cell / "results.json").read_text())
    (cell / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    info = write_summary(out, [], "test")
    assert info.not_counted == [] and len(bench_csv(out)) == 1

    # a value edited by hand: named, and left out of every table
    results["test"]["balanced_accuracy"] = 0.99
    (cell / "results.json").write_text(json.dumps(results, indent=2))
    info = write_summary(out, [], "test")
    line = (
        f"{cell.relative_to(out)}: not counted: results.json was changed after the cell "
        "finished (it does not match the sha256 digest in cell.json)"
    )
    assert info.not_counted == [line]
    assert bench_csv(out) == [] and f"- {line}\n" in (out / "summary.md").read_text()
    assert "0.99" not in (out / "bench.csv").read_text()
    # the same bench reruns the cell whose record no longer holds
    res = cli(*grid)
    assert res.exit_code == 0, res.output
    assert "1 cells, 0 already finished, 1 to run" in res.stdout
    assert [r["status"] for r in bench_csv(out)] == ["finished"]


# --- 4. ties, and an estimator that never ran ---------------------------------------------------


def test_identical_configurations_share_a_rank_and_an_estimator_that_never_ran_is_said(
    cli, tmp_path
):
    out = tmp_path / "b"
    # --rounds 2 with linear: the anchors, then the full set; no query ever scores
    grid = ["--estimators", "entropy,random", "--policies", "linear", "--seeds", "0"]
    res = cli("bench", "--out", out, *grid, *TINY_CELL)
    assert res.exit_code == 0, res.output
    rows = bench_csv(out)
    assert [r["scored_queries"] for r in rows] == ["0", "0"]
    assert rows[0]["test_balanced_accuracy"] == rows[1]["test_balanced_accuracy"]
    md = (out / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| 1")]
    assert [ln.split(" | ")[:2] for ln in table] == [
        ["| 1=", "entropy/linear ‡"],
        ["| 1=", "random/linear ‡"],
    ]
    for method in ("entropy/linear", "random/linear"):
        assert (
            f"- ‡ {method}: the estimator never ran: no query scored a candidate (each growth "
            "step took whole classes, e.g. --rounds 2 with policy linear goes from the anchors "
            "straight to the full set), so its result is the anchors' and the policy's, the same "
            "whatever the estimator\n"
        ) in md
    assert "| random/linear | 1 | +0.00 |" in md and md.count("best (tie)") == 1


def test_scored_queries_from_scores_or_rounds(tmp_path):
    import numpy as np

    from flexsample.workflows.bench_summary import scored_queries, tie_ranks

    run = tmp_path / "run"
    run.mkdir()
    assert scored_queries(run) is None  # nothing to tell from
    np.savez(run / "scores.npz", step=np.array([1, 1, 2]), index=np.arange(3), score=np.ones(3))
    assert scored_queries(run) == 2
    (run / "scores.npz").unlink()
    # without scores.npz: rounds.jsonl, when the run reached its full split (4 + 3 images)
    steps = [[2, 1], [3, 3], [4, 3]]  # step 1: class 0 took 1 of its 2 left (scored)
    (run / "rounds.jsonl").write_text(
        "".join(json.dumps({"class_counts": c}) + "\n" for c in steps)
    )
    (run / "results.json").write_text(json.dumps({"train_size": 7}))
    assert scored_queries(run) == 1
    (run / "results.json").write_text(json.dumps({"train_size": 9}))  # never reached the full set
    assert scored_queries(run) is None

    def entry(v):
        return {"test_balanced_accuracy": (v, None)}

    assert tie_ranks([entry(0.5), entry(0.5), entry(0.4)]) == ["1=", "1=", "3"]
    assert tie_ranks([entry(0.6), entry(0.5), entry(0.5)]) == ["1", "2=", "2="]
    assert tie_ranks([entry(0.1 + 0.2), entry(0.3)]) == ["1=", "1="]  # equal up to rounding


def test_a_tracker_destination_is_checked_once_before_any_cell(cli, tmp_path):
    """A bad --log-dir is one line before the grid starts (each cell used to fail with it)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "b"
    res = cli(
        "bench", "--out", out, *TINY_CELL, "--log-to", "tensorboard", "--log-dir", afile
    )  # fmt: skip
    line = one_error_line(res)
    assert line.startswith("error: --log-to tensorboard: cannot write its logs to ")
    assert "is a file, not a folder" in line
    assert not out.exists()
