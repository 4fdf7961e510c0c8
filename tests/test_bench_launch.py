"""Running a bench grid (issue 9): GPU placement and threads per cell, failed cells recorded and
retried while the rest of the grid finishes, launcher flags checked before anything runs."""

from __future__ import annotations

import csv
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.bench import CELL_FILE, read_failure, run_bench
from flexsample.workflows.config import RunConfig
from flexsample.workflows.launchers.local import LocalLauncher, plan_slots

from .conftest import one_error_line

TINY_CELL = ["--epochs-per-round", "1", "--rounds", "3", "--device", "cpu"]
TINY = {"epochs_per_round": 1, "rounds": 2, "estimator": "random"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "bench.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cell_docs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob(CELL_FILE))]


# --- placement -------------------------------------------------------------------------------


def test_each_cell_gets_its_own_gpu_and_a_share_of_the_cores():
    slots = plan_slots(2, ["0", "1"], cores=8)
    assert [s.gpu for s in slots] == ["0", "1"]
    assert [s.threads for s in slots] == [4, 4]
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]


def test_cells_per_gpu_packs_cells_round_robin():
    slots = plan_slots(4, ["0", "1"], cells_per_gpu=2, cores=16)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]
    assert sum(s.threads for s in slots) == 16


def test_one_cell_keeps_torch_default_threads_and_cpu_means_no_placement():
    assert plan_slots(1, ["0"], cores=8)[0].threads == 0
    assert [s.gpu for s in plan_slots(2, ["0", "1"], cores=2, device="cpu")] == [None, None]
    assert [s.gpu for s in plan_slots(2, ["0", "1"], cores=2, device="cuda:1")] == [None, None]
    assert [s.gpu for s in plan_slots(3, [], cores=2)] == [None] * 3  # no GPU: CPU cells


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"jobs": 3, "gpus": ["0", "1"]},
            "--jobs 3 needs 3 GPU slots but this machine has 2 GPU(s) x --cells-per-gpu 1 = 2",
        ),
        ({"jobs": 2, "gpus": [], "cpus_per_cell": 2}, "= 4 threads, more than the 2 cores"),
        ({"jobs": 0, "gpus": []}, "--jobs 0 is out of range"),
        ({"jobs": 1, "gpus": [], "cells_per_gpu": 0}, "--cells-per-gpu 0 is out of range"),
    ],
)
def test_placement_that_cannot_fit_is_one_line(kwargs, message):
    with pytest.raises(FlexsampleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_slots(cores=2, **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    gpus=st.integers(0, 8),
    per_gpu=st.integers(1, 4),
    cores=st.integers(1, 64),
    jobs=st.integers(1, 32),
    cpus=st.one_of(st.none(), st.integers(1, 8)),
)
def test_placement_never_oversubscribes(gpus, per_gpu, cores, jobs, cpus):
    ids = [str(i) for i in range(gpus)]
    try:
        slots = plan_slots(jobs, ids, per_gpu, cores, cpus)
    except FlexsampleError:
        assert (gpus and jobs > gpus * per_gpu) or (cpus is not None and jobs * cpus > cores)
        return
    assert len(slots) == jobs
    used = [s.gpu for s in slots if s.gpu is not None]
    assert all(used.count(g) <= per_gpu for g in ids)
    if gpus:
        assert len(set(used)) == min(jobs, gpus)  # spread before packing
    threads = [s.threads or cores for s in slots]
    assert sum(threads) <= max(cores, jobs)  # one thread each at least


def test_worker_processes_are_pinned_to_distinct_devices(tmp_path):
    """Faked GPUs '0' and '1': each worker process runs its cells with its own
    CUDA_VISIBLE_DEVICES (no CUDA here, so `auto` falls back to the CPU) and one thread."""
    out = tmp_path / "b"
    launcher = LocalLauncher(jobs=2, gpus=["0", "1"], device="auto", cores=2)
    result = run_bench(
        RunConfig(**TINY), out, seeds=[0, 1, 2], launcher=launcher, cpus_per_cell=None
    )
    assert not result.failed and len(result.report.finished) == 3
    docs = cell_docs(out)
    assert {d["gpu"] for d in docs} == {"0", "1"}
    assert all(d["threads"] == 1 for d in docs)
    assert len({d["pid"] for d in docs}) == 2  # one process per slot, kept for its cells


def test_same_results_in_process_and_in_workers_at_the_same_threads(tmp_path):
    kwargs = {"seeds": [0, 1], "cpus_per_cell": 1}
    one = run_bench(RunConfig(**TINY), tmp_path / "one", jobs=1, **kwargs)
    two = run_bench(RunConfig(**TINY), tmp_path / "two", jobs=2, **kwargs)
    assert not one.failed and not two.failed
    metric = "test_balanced_accuracy"
    one_rows, two_rows = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r[metric] for r in one_rows] == [r[metric] for r in two_rows]


# --- failed cells ----------------------------------------------------------------------------

BOOM = """
from flexsample import Estimator, register_estimator

@register_estimator("{name}")
class Boom(Estimator):
    def score(self, ctx, candidates):
        raise ValueError("kaboom")
"""


@pytest.fixture
def boom_plugin(tmp_path, monkeypatch):
    from flexsample.engine.registries import PLUGIN_REGISTRIES

    name = f"fs_boom_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(BOOM.format(name="boom")))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = PLUGIN_REGISTRIES["estimator"]
    reg.names()
    saved = (dict(reg._items), dict(reg._origin), dict(reg._source))
    yield name
    reg._items, reg._origin, reg._source = saved
    sys.modules.pop(name, None)


def test_a_failing_cell_is_recorded_retried_and_the_grid_finishes(cli, tmp_path, boom_plugin):
    out = tmp_path / "b"
    res = cli(
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--plugin",
        boom_plugin,
        "--estimators",
        "random,boom",
        "--seeds",
        "0,1",
        "--retries",
        "1",
    )
    line = one_error_line(res)
    assert "2 of 4 cells failed after every retry" in line
    assert "estimator 'boom'" in line and "kaboom" in line
    status = {(r["estimator"], r["seed"]): r["status"] for r in rows(out)}
    assert status == {
        ("random", "0"): "finished",
        ("random", "1"): "finished",
        ("boom", "0"): "failed",
        ("boom", "1"): "failed",
    }
    failures = [read_failure(p.parent) for p in out.rglob(CELL_FILE)]
    failures = [f for f in failures if f is not None]
    assert len(failures) == 2 and all(f.attempts == 2 and f.user_error for f in failures)
    assert all(
        "ValueError: kaboom" in json.loads((f.out / CELL_FILE).read_text())["traceback"]
        for f in failures
    )
    assert "retried 2" in res.stdout
    # the rerun runs the failed cells only
    res = cli(
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--plugin",
        boom_plugin,
        "--estimators",
        "random,boom",
        "--seeds",
        "0,1",
        "--retries",
        "0",
    )
    assert "4 cells, 2 already finished, 2 to run" in res.stdout


# --- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--launcher", "mpi"], "unknown --launcher 'mpi'; accepted: local, ray, slurm"),
        (["--partition", "gpu"], "--partition applies to --launcher slurm, not local"),
        (["--launcher", "ray", "--jobs", "2"], "--jobs applies to --launcher local"),
        (["--address", "auto"], "--address applies to --launcher ray, not local"),
        (
            ["--cells-per-gpu", "2", "--launcher", "ray"],
            "--cells-per-gpu applies to --launcher local",
        ),
        (["--launcher", "slurm", "--slurm-extra", "mem"], "--slurm-extra 'mem' must be KEY=VALUE"),
        (["--retries", "-1"], "--retries -1 is out of range"),
        (["--jobs", "4", "--cpus-per-cell", "2"], "threads, more than the"),
    ],
)
def test_bad_launcher_flags(cli, tmp_path, args, expected):
    out = tmp_path / "b"
    line = one_error_line(cli("bench", "--out", out, *TINY_CELL, *args))
    assert expected in line
    assert not (out / "bench.csv").exists()


def test_bench_cells_log_to_a_tracker_grouped_by_the_bench(cli, tmp_path):
    out, logs = tmp_path / "mybench", tmp_path / "logs"
    res = cli(
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--estimators",
        "random",
        "--seeds",
        "0,1",
        "--log-to",
        "csv",
        "--log-dir",
        logs,
    )
    assert res.exit_code == 0, res.output
    runs = sorted(p.name for p in (logs / "mybench").iterdir())
    assert len(runs) == 2 and all(r.startswith("random-linear-seed") for r in runs)
    for run in runs:
        with open(logs / "mybench" / run / "test.csv", encoding="utf-8") as fh:
            assert list(csv.DictReader(fh))  # the test metrics reached the tracker
    bad = one_error_line(cli("bench", "--out", tmp_path / "x", *TINY_CELL, "--log-to", "excel"))
    assert "unknown tracker 'excel'" in bad


def test_a_cell_with_tracker_logs_in_its_folder_is_retried(cli, tmp_path, monkeypatch):
    """The trackers' default folders (here logs/) are the run's own: a retry replaces them."""
    from flexsample.engine import faults

    out = tmp_path / "b"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv(faults.ENV, "evaluation:disk-full")  # fires once: the retry succeeds
    res = cli("bench", "--out", out, *TINY_CELL, "--estimators", "random", "--log-to", "csv")
    assert res.exit_code == 0, res.output
    assert "retried 1" in res.stdout
    assert [r["status"] for r in rows(out)] == ["finished"]


def test_an_interrupt_raised_inside_a_worker_fails_that_cell_only(cli, tmp_path, monkeypatch):
    """Workers ignore the user's Ctrl-C, so a KeyboardInterrupt in one comes from its cell: the
    cell is recorded and retried (the fault fires once per worker), the grid goes on."""
    from flexsample.engine import faults

    out = tmp_path / "b"
    monkeypatch.setenv(faults.ENV, "train-epoch:interrupt")
    res = cli(
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--estimators",
        "random",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
    )
    assert res.exit_code == 0, res.output
    assert "retried 2" in res.stdout
    assert [r["status"] for r in rows(out)] == ["finished", "finished"]
