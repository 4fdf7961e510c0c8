"""Cluster launchers (issue 9): `--launcher ray` on a local Ray runtime and `--launcher slurm`
through submitit (its local executor, and the real Slurm path against stand-in sbatch / sacct
commands) give the same per-cell results as `--launcher local`; sbatch parameters, time
limits, reattaching to running jobs and missing packages."""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.bench import read_cell
from flexsample.workflows.bench_summary import METRIC_COLUMNS
from flexsample.workflows.launchers import slurm as slurm_mod

from .conftest import Cli, one_error_line

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.needs("ray", "submitit"),
]

TINY_CELL = ["--epochs-per-round", "1", "--rounds", "2", "--device", "cpu"]
GRID = ["--estimators", "random,entropy", "--policies", "linear", "--seeds", "0,1"]
SAME = [c for c in METRIC_COLUMNS if not c.endswith("_s")]  # all a cell computes, not times


def rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "bench.csv", encoding="utf-8") as fh:
        return {(r["method"], r["seed"]): r for r in csv.DictReader(fh)}


def metrics(table: dict[tuple[str, str], dict[str, str]]) -> dict:
    return {key: {c: r[c] for c in SAME} for key, r in table.items()}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The grid with --launcher local, one thread per cell: what every launcher must match."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("local") / "b"
    try:
        res = Cli()(
            "bench", "--out", out, *TINY_CELL, *GRID, "--baselines", "ce", "--cpus-per-cell", "1"
        )
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    table = rows(out)
    assert len(table) == 6 and all(r["status"] == "finished" for r in table.values())
    return table


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime (2 CPUs) for every Ray test: starting one costs seconds."""
    ray = pytest.importorskip("ray")
    from flexsample.workflows.launchers.ray import RayLauncher

    owner = RayLauncher(num_cpus=2)
    try:
        owner.start([])
    except FlexsampleError:  # Ray's start-up has fixed timeouts: a loaded machine may miss one
        owner.start([])
    assert owner.owns_runtime and "started a local runtime with 2 CPUs" in owner.note
    yield ray
    owner.close()
    assert not ray.is_initialized()


# --- Ray ---------------------------------------------------------------------------------------


def test_ray_grid_gives_the_local_results(ray_runtime, local_reference, cli, tmp_path):
    out = tmp_path / "b"
    res = cli(
        "bench",
        "--out",
        out,
        *TINY_CELL,
        *GRID,
        "--baselines",
        "ce",
        "--launcher",
        "ray",
        "--cpus-per-cell",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert "6 cells, 0 already finished, 6 to run (ray)" in res.stdout
    table = rows(out)
    assert metrics(table) == metrics(local_reference)
    docs = [json.loads(p.read_text()) for p in out.rglob("cell.json")]
    assert len(docs) == 6 and {d["threads"] for d in docs} == {1}
    assert len({d["pid"] for d in docs} - {os.getpid()}) >= 1  # ran in Ray workers
    assert ray_runtime.is_initialized()  # a runtime the bench did not start stays up


def test_a_dead_ray_worker_is_one_line(ray_runtime):
    from flexsample.workflows.launchers.ray import RayJob, RayLauncher

    launcher = RayLauncher()
    launcher.start([])
    assert not launcher.owns_runtime and "already initialised" in launcher.note

    def die() -> None:
        os._exit(3)  # as a kill or the out-of-memory killer would end the worker

    doomed = ray_runtime.remote(max_retries=0)(die).remote()
    job = RayJob(doomed, "doomed", time.monotonic())
    deadline = time.monotonic() + 120
    while (outcome := launcher.poll(job)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert outcome is not None and not outcome.ok
    assert outcome.error == (
        "the Ray worker running the cell died (killed by a signal or out of memory)"
    )
    launcher.close()
    assert ray_runtime.is_initialized()


def test_a_cell_that_fits_no_ray_node_is_said(ray_runtime):
    from flexsample.workflows.launchers.ray import RayLauncher

    launcher = RayLauncher(cpus_per_cell=3, gpus_per_cell=1)
    launcher.start([])  # a runtime it did not start may grow (an autoscaler): a warning
    assert launcher.note.endswith(
        "warning: --cpus-per-cell 3 --gpus-per-cell 1 fits no node of the Ray cluster (the "
        "largest have 2 CPUs, 0 GPUs), so cells wait for the autoscaler"
    )


def test_unreachable_ray_address_is_one_line(monkeypatch):
    ray = pytest.importorskip("ray")
    from flexsample.workflows.launchers.ray import RayLauncher

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(FlexsampleError) as err:
        RayLauncher(address="127.0.0.1:1").start([])
    line = str(err.value)
    assert line.startswith("--address 127.0.0.1:1: no Ray cluster answers there")
    assert "accepted: auto" in line and "ray://HOST:PORT" in line and "\n" not in line
    with pytest.raises(FlexsampleError, match="--address 'somewhere' is not a Ray address"):
        RayLauncher(address="somewhere").start([])


def test_ray_resource_flags_are_checked():
    pytest.importorskip("ray")
    from flexsample.workflows.launchers.ray import RayLauncher

    with pytest.raises(FlexsampleError, match="--cpus-per-cell 0 is out of range"):
        RayLauncher(cpus_per_cell=0)
    with pytest.raises(FlexsampleError, match="--gpus-per-cell 1.5 is out of range"):
        RayLauncher(gpus_per_cell=1.5)


# --- Slurm: flags --------------------------------------------------------------------------------

FLAGS = dict(
    partition="gpu",
    gpus_per_cell=1.0,
    cpus_per_cell=4,
    time="04:00:00",
    array_parallelism=8,
    extra={"mem": "32G"},
)
CLI_FLAGS = [
    "--partition",
    "gpu",
    "--gpus-per-cell",
    "1",
    "--cpus-per-cell",
    "4",
    "--time",
    "04:00:00",
    "--slurm-array-parallelism",
    "8",
    "--slurm-extra",
    "mem=32G",
]


@pytest.mark.parametrize(
    "value, minutes",
    [("04:00:00", 240), ("1-12:00:00", 2160), ("00:00:30", 1), ("0:59:59", 60), ("12:5:0", 725)],
)
def test_time_limits_in_minutes(value, minutes):
    assert slurm_mod.parse_time(value) == minutes


@pytest.mark.parametrize("value", ["4h", "04:00", "00:61:00", "1-24:00:00", "00:00:00", ""])
def test_bad_time_limit_is_one_line(value):
    with pytest.raises(FlexsampleError) as err:
        slurm_mod.parse_time(value)
    assert f"--time '{value}'" in str(err.value)
    assert "accepted: HH:MM:SS or D-HH:MM:SS" in str(err.value)


def test_sbatch_parameters_for_a_flag_set(tmp_path):
    assert slurm_mod.sbatch_parameters(**FLAGS) == {
        "job_name": "flexsample-bench",
        "partition": "gpu",
        "gpus_per_node": 1,
        "cpus_per_task": 4,
        "time": 240,
        "array_parallelism": 8,
        "additional_parameters": {"mem": "32G"},
    }
    lines = sbatch_lines(slurm_mod.sbatch_script(tmp_path / "%j", 20, **FLAGS))
    assert {
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--time=240",
        "--array=0-19%8",
        "--mem=32G",
        "--job-name=flexsample-bench",
        f"--output={tmp_path}/%A_%a/%A_%a_0_log.out",
    } <= set(lines)
    # without GPUs there is no GPU line; --slurm-extra can give the time limit itself
    plain = slurm_mod.sbatch_parameters(extra={"time": "30"})
    assert plain == {
        "job_name": "flexsample-bench",
        "cpus_per_task": 1,
        "additional_parameters": {"time": "30"},
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        ({}, "--launcher slurm needs --time, each cell's time limit"),
        ({"time": "1:00:00", "gpus_per_cell": 0.5}, "--gpus-per-cell 0.5 is out of range"),
        ({"time": "1:00:00", "array_parallelism": 0}, "--slurm-array-parallelism 0 is out of"),
        ({"time": "1:00:00", "cpus_per_cell": 0}, "--cpus-per-cell 0 is out of range"),
    ],
)
def test_bad_slurm_flags_are_one_line(flags, message):
    with pytest.raises(FlexsampleError, match=message):
        slurm_mod.sbatch_parameters(**flags)


def test_slurm_without_slurm_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.delenv(slurm_mod.CLUSTER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    res = cli(
        "bench", "--out", tmp_path / "b", *TINY_CELL, "--launcher", "slurm", "--time", "1:00:00"
    )
    line = one_error_line(res)
    assert "--launcher slurm needs Slurm's sbatch and srun on PATH" in line
    assert f"{slurm_mod.CLUSTER_ENV}=local" in line


def sbatch_lines(script: str) -> list[str]:
    return [ln.removeprefix("#SBATCH ") for ln in script.splitlines() if ln.startswith("#SBATCH")]


# --- Slurm: the real submitit Slurm path, against stand-in commands ------------------------------


def fake_slurm(bin_dir: Path, state: Path, base: int) -> None:
    """sbatch keeps each script and answers job ids base+1, base+2 ...; sacct prints
    state/sacct.txt; srun exists (submitit looks for it); scancel records its arguments."""
    scripts = {
        "sbatch": f"""n=$(cat "{state}/count" 2>/dev/null || echo 0); n=$((n+1))
echo $n > "{state}/count"; cp "$1" "{state}/script$n.sh"
echo "Submitted batch job $(({base} + n))"
""",
        "sacct": f'cat "{state}/sacct.txt" 2>/dev/null || echo "JobID|State|NodeList"\n',
        "srun": "exit 1\n",
        "scancel": f'echo "$@" >> "{state}/scancel.txt"\n',
    }
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_submits_one_array_and_a_rerun_reattaches(cli, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    state, out = tmp_path / "state", tmp_path / "b"
    state.mkdir()
    fake_slurm(tmp_path / "bin", state, base=7100)
    monkeypatch.delenv(slurm_mod.CLUSTER_ENV, raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    args = [
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--seeds",
        "0,1",
        "--estimator",
        "random",
        "--launcher",
        "slurm",
        *CLI_FLAGS,
        "--no-wait",
    ]

    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "2 cells submitted and not finished yet (--no-wait)" in res.stdout
    submitted = (state / "script1.sh").read_text()
    folder = (out / "slurm").resolve()
    assert sbatch_lines(submitted) == sbatch_lines(
        slurm_mod.sbatch_script(folder / "%j", 2, **FLAGS)
    )
    assert "--array=0-1%2" in sbatch_lines(submitted)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert jobs["cluster"] == "slurm"
    by_id = {v["job_id"]: Path(cell) for cell, v in jobs["cells"].items()}
    assert set(by_id) == {"7101_0", "7101_1"}

    # one job still running, one that died: a rerun waits for the first, resubmits the second
    (state / "sacct.txt").write_text(
        "JobID|State|NodeList\n7101_0|RUNNING|node1\n7101_1|OUT_OF_MEMORY|node2\n"
    )
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "2 cells submitted and not finished yet (--no-wait)" in res.stdout
    resubmitted = sbatch_lines((state / "script2.sh").read_text())
    assert not any(ln.startswith("--array") for ln in resubmitted)  # one cell: a plain job
    assert "--partition=gpu" in resubmitted and "--time=240" in resubmitted
    assert not (state / "script3.sh").exists()
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert {v["job_id"] for v in jobs["cells"].values()} == {"7101_0", "7102"}
    assert jobs["cells"][str(by_id["7101_1"])]["job_id"] == "7102"


def test_slurm_job_that_ended_without_a_result_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    fake_slurm(tmp_path / "bin", tmp_path, base=7200)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "sacct.txt").write_text("JobID|State|NodeList\n7201_3|TIMEOUT|node1\n")
    launcher = slurm_mod.SlurmLauncher(time="1:00:00", out=tmp_path / "b", cluster="slurm")
    import submitit

    job = submitit.SlurmJob(launcher.folder / "%j", "7201_3")
    outcome = launcher.poll(job)
    assert outcome is not None and not outcome.ok
    assert outcome.error.startswith(
        "the slurm job 7201_3 ended (TIMEOUT) before the cell finished (a time limit"
    )
    assert outcome.where == "slurm job 7201_3"


# --- Slurm: submitit's local executor, same results, --no-wait then rerun ----------------------


def test_slurm_local_executor_no_wait_then_rerun_collects(
    local_reference, cli, tmp_path, monkeypatch
):
    pytest.importorskip("submitit")
    monkeypatch.setenv(slurm_mod.CLUSTER_ENV, "local")
    out = tmp_path / "b"
    args = [
        "bench",
        "--out",
        out,
        *TINY_CELL,
        "--estimators",
        "random",
        "--policies",
        "linear",
        "--seeds",
        "0,1",
        "--launcher",
        "slurm",
        "--cpus-per-cell",
        "1",
    ]
    res = cli(*args, "--no-wait")
    assert res.exit_code == 0, res.output
    assert "2 cells submitted and not finished yet (--no-wait)" in res.stdout
    submitted = json.loads((out / "slurm" / "jobs.json").read_text())["cells"]
    cells = [Path(p) for p in submitted]
    assert len(cells) == 2 and not any(read_cell(c) for c in cells)
    # the same command: waits for the cells still running (no second submission), then
    # collects them with any that finished meanwhile, and summarises
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "2 cells, " in res.stdout and all(read_cell(c) for c in cells)
    assert json.loads((out / "slurm" / "jobs.json").read_text())["cells"] == submitted
    assert len([p for p in (out / "slurm").iterdir() if p.is_dir()]) == 2  # two jobs, no more
    table = rows(out)
    assert set(table) == {("random/linear", "0"), ("random/linear", "1")}
    assert metrics(table) == {k: v for k, v in metrics(local_reference).items() if k in table}
    assert (out / "summary.md").exists()
    docs = [json.loads((c / "cell.json").read_text()) for c in cells]
    assert {d["threads"] for d in docs} == {1} and os.getpid() not in {d["pid"] for d in docs}


# --- missing packages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launcher, module, extra_flags",
    [("ray", "ray", []), ("slurm", "submitit", ["--time", "1:00:00"])],
)
def test_missing_package_names_the_extra(cli, tmp_path, monkeypatch, launcher, module, extra_flags):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    res = cli("bench", "--out", tmp_path / "b", *TINY_CELL, "--launcher", launcher, *extra_flags)
    line = one_error_line(res)
    assert line.endswith(
        f"--launcher {launcher} needs the optional package '{module}', which is not "
        "installed; install it with: pip install 'flexsample[cluster]'"
    )
