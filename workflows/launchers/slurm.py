"""`--launcher slurm`: the grid as one Slurm job array, submitted through submitit.

Each cell is one array task running the same `cell_entry` as every launcher, with
`--cpus-per-cell` CPUs (its torch threads too) and `--gpus-per-cell` GPUs; Slurm queues and
places them, `--slurm-array-parallelism` caps how many run at once. Logs and submitit's
pickles go under `<out>/slurm/<job id>/`. The driver waits for the array (Ctrl-C cancels it),
or returns right after submitting (`--no-wait`).

The driver never unpickles anything: on a shared filesystem anyone who can write under --out
could plant a pickle there. Each array task writes its cell's outcome as flexsample's own
JSON record (`<job id>_<task>_outcome.json` beside submitit's files: ok, the one-line error,
where it ran); the driver reads that record, the cell's own cell.json / results.json, the
job's state (sacct, or the local process) and the text of its log, never submitit's result
pickles. A result file without a record is ignored: the job is waited for until its state
says it ended. (The array tasks themselves load the job pickle submitit wrote under
`<out>/slurm/`, which is how submitit starts a Python function on a node: keep --out writable
by you alone.)

The job ids are recorded in `<out>/slurm/jobs.json` (cell folder -> job id) as they are
submitted, so a later bench on the same --out (after --no-wait, or after the driver was
killed) waits for the cells whose jobs are still pending or running instead of submitting
them again; cells that finished meanwhile are collected from their folders like any finished
cell, and cells whose jobs ended without finishing are submitted again.

`cluster="local"` (or FLEXSAMPLE_SLURM_CLUSTER=local) runs the same code path through
submitit's local executor: each cell a local process, no Slurm needed, for tests and for
trying a grid before sending it to a cluster. There, `--slurm-array-parallelism` (default:
the cores / --cpus-per-cell) caps how many cells run at once while the driver waits,
`--partition` and `--slurm-extra` have no effect, and a later driver reattaches to the cells
whose local processes still run (found through /proc, so on Linux).

On Slurm, `--time` is required (submitit would otherwise ask for 5 minutes; `--slurm-extra
time=...` also does); job states come from `sacct`, and a job whose state cannot be read is
taken as ended, so its unfinished cell is submitted again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar

from flexsample._optional import require
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import LAUNCHERS

from . import CellTask, Launcher, Outcome

CLUSTER_ENV = "FLEXSAMPLE_SLURM_CLUSTER"
CLUSTERS = ("slurm", "local")
JOBS_FILE = "jobs.json"
JOB_NAME = "flexsample-bench"
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the local executor's limit when --time is not given
POLL_EVERY_S = {"slurm": 5.0, "local": 0.5}  # per job: spare a shared filesystem
RESULT_GRACE_S = 60.0  # a COMPLETED job's outcome record may reach a network filesystem late
OUTCOME_FORMAT = 1
# Slurm states of a job that may still run the cell (anything else ended it)
ALIVE = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "CONFIGURING",
        "COMPLETING",
        "RESIZING",
        "SUSPENDED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SIGNALING",
        "STAGE_OUT",
    }
)
TIME_FORMS = "HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00, 1-12:00:00)"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_time(value: str) -> int:
    """'04:00:00' -> 240, '1-12:00:00' -> 2160: a time limit in whole minutes (seconds
    rounded up, as submitit passes minutes to sbatch)."""
    match = _TIME.match(value.strip())
    if match is None:
        raise FlexsampleError(f"--time '{value}' is not a time limit; accepted: {TIME_FORMS}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if minutes > 59 or seconds > 59 or (days and hours > 23):
        raise FlexsampleError(f"--time '{value}' is not a time limit; accepted: {TIME_FORMS}")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total == 0:
        raise FlexsampleError(f"--time '{value}' is zero; accepted: {TIME_FORMS}, above zero")
    return -(-total // 60)


def executor_parameters(
    partition: str | None = None,
    gpus_per_cell: float | None = 0.0,
    cpus_per_cell: int | None = None,
    time: str | None = None,
    array_parallelism: int | None = None,
    extra: Mapping[str, str] | None = None,
    name: str = JOB_NAME,
    cluster: str = "slurm",
) -> dict[str, Any]:
    """The flags as `submitit.AutoExecutor.update_parameters` arguments: a pure function,
    checked value by value (one FlexsampleError line for a bad one)."""
    cpus = 1 if cpus_per_cell is None else cpus_per_cell
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise FlexsampleError(
            f"--cpus-per-cell {cpus_per_cell} is out of range; accepted: an integer >= 1"
        )
    gpus = float(gpus_per_cell or 0.0)
    if gpus < 0 or not gpus.is_integer():
        raise FlexsampleError(
            f"--gpus-per-cell {gpus_per_cell:g} is out of range for Slurm, which gives whole "
            "GPUs; accepted: 0, 1, 2 ..."
        )
    if array_parallelism is not None and array_parallelism < 1:
        raise FlexsampleError(
            f"--slurm-array-parallelism {array_parallelism} is out of range; accepted: an "
            "integer >= 1"
        )
    additional = {str(k).lstrip("-").strip(): str(v) for k, v in (extra or {}).items()}
    if time is not None:
        minutes = parse_time(time)
    elif cluster == "local":
        minutes = LOCAL_TIMEOUT_MIN
    elif "time" in additional:
        minutes = None  # --slurm-extra time=... says it
    else:
        raise FlexsampleError(
            f"--launcher slurm needs --time, each cell's time limit ({TIME_FORMS}); without "
            "it submitit would ask Slurm for 5 minutes"
        )
    params: dict[str, Any] = {"name": name, "cpus_per_task": cpus}
    if minutes is not None:
        params["timeout_min"] = minutes
    if gpus:
        params["gpus_per_node"] = int(gpus)
    if partition:
        params["slurm_partition"] = partition
    if array_parallelism is not None:
        params["slurm_array_parallelism"] = array_parallelism
    if additional:
        params["slurm_additional_parameters"] = additional
    return params


_SLURM_NAMES = {"name": "job_name", "timeout_min": "time"}


def sbatch_parameters(**flags: Any) -> dict[str, Any]:
    """The same flags as submitit's Slurm executor parameters (`job_name`, `time` in minutes,
    `partition`, `cpus_per_task`, `gpus_per_node`, `array_parallelism`,
    `additional_parameters`): what the sbatch script is rendered from."""
    params = executor_parameters(**flags, cluster="slurm")
    return {_SLURM_NAMES.get(k, k.removeprefix("slurm_")): v for k, v in params.items()}


def sbatch_script(folder: Path | str, cells: int, **flags: Any) -> str:
    """The sbatch script of a `cells`-task array for these flags, rendered by submitit's own
    Slurm renderer (the text `sbatch` gets, less the job's own command)."""
    require("submitit", "cluster", "--launcher slurm")
    from submitit.slurm.slurm import _make_sbatch_string

    command = "python -u -m submitit.core._submit " + str(folder)
    return _make_sbatch_string(
        command=command, folder=str(folder), map_count=cells, **sbatch_parameters(**flags)
    )


@LAUNCHERS.register("slurm")
class SlurmLauncher(Launcher):
    """The grid as one submitit job array; see the module docstring."""

    name = "slurm"
    slots = None
    flags: ClassVar[dict[str, str]] = {
        "array_parallelism": "--slurm-array-parallelism",
        "extra": "--slurm-extra",
        "wait": "--no-wait",
    }

    def __init__(
        self,
        partition: Annotated[str | None, opt("the partition")] = None,
        gpus_per_cell: Annotated[float | None, opt("whole GPUs per cell", ge=0)] = 0.0,
        cpus_per_cell: Annotated[
            int | None, opt("CPUs (and torch threads) per cell [default: 1]", ge=1)
        ] = None,
        time: Annotated[
            str | None, opt(f"time limit per cell, {TIME_FORMS} (required on Slurm)")
        ] = None,
        array_parallelism: Annotated[
            int | None, opt("at most this many array tasks at once", ge=1)
        ] = None,
        extra: Annotated[
            Mapping[str, str] | None, opt("extra sbatch parameters, KEY -> VALUE")
        ] = None,
        wait: Annotated[bool, opt("wait for the array; False returns after submitting")] = True,
        out: Path | str | None = None,
        cluster: Annotated[
            str | None, opt(f"slurm or local [default: {CLUSTER_ENV}, else slurm]")
        ] = None,
        name: Annotated[str, opt("the job name")] = JOB_NAME,
    ) -> None:
        self._submitit = require("submitit", "cluster", "--launcher slurm")
        cluster = cluster or os.environ.get(CLUSTER_ENV) or "slurm"
        if cluster not in CLUSTERS:
            raise FlexsampleError(
                f"Slurm cluster '{cluster}' (the cluster option or {CLUSTER_ENV}) is unknown; "
                f"accepted: {', '.join(CLUSTERS)}"
            )
        if out is None:
            raise FlexsampleError("--launcher slurm needs --out (logs go under <out>/slurm)")
        self.cluster = cluster
        self.params = executor_parameters(
            partition,
            gpus_per_cell,
            cpus_per_cell,
            time,
            array_parallelism,
            extra,
            name,
            cluster,
        )
        self.cpus_per_cell = self.params["cpus_per_task"]
        self.folder = Path(out).resolve() / "slurm"
        self.wait = wait
        if cluster == "local":
            if wait:  # (--no-wait submits every cell at once)
                cores = os.cpu_count() or 1
                self.slots = array_parallelism or max(1, cores // self.cpus_per_cell)
        elif shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise FlexsampleError(
                "--launcher slurm needs Slurm's sbatch and srun on PATH (run the bench on a "
                f"Slurm login node); {CLUSTER_ENV}=local runs the same path with local "
                "processes"
            )
        self.note = (
            f"Slurm: one job array, logs under {self.folder}"
            if cluster == "slurm"
            else f"Slurm (local executor): cells as local processes, logs under {self.folder}"
        )
        self._executor: Any = None
        self._ended: dict[str, float] = {}  # job id -> when seen ended without a record
        self._next_check: dict[str, float] = {}  # job id -> when to look at it again
        self._tasks: dict[str, CellTask] = {}  # job id -> the task it runs

    @property
    def waits(self) -> bool:
        return self.wait

    def start(self, tasks: Sequence[CellTask]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        executor = self._submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        executor.update_parameters(**self.params)
        self._executor = executor

    # -- submitting, and finding what an earlier driver submitted --
    def submit(self, tasks: Sequence[CellTask]) -> list[Any]:
        placed = [replace(t, threads=self.cpus_per_cell) for t in tasks]
        with self._executor.batch():
            jobs = [self._executor.submit(array_task, t) for t in placed]
        self._record(placed, jobs)
        for task, job in zip(placed, jobs, strict=True):
            self._tasks[str(job.job_id)] = task
        return jobs

    def _record(self, tasks: Sequence[CellTask], jobs: Sequence[Any]) -> None:
        """Cell folder -> job id in jobs.json, written before the driver waits for any."""
        from flexsample.workflows.outputs import write_json

        doc = self._read_jobs()
        if doc.get("cluster") != self.cluster:
            doc = {"format": 1, "cluster": self.cluster, "cells": {}}
        for task, job in zip(tasks, jobs, strict=True):
            doc["cells"][task.out] = {
                "job_id": str(job.job_id),
                "key": task.key,
                "attempt": task.attempt,
                "submitted": time.time(),
            }
        write_json(self.folder / JOBS_FILE, doc)

    def _read_jobs(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.folder / JOBS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or not isinstance(doc.get("cells"), dict):
            return {}
        return doc

    def attach(self, tasks: Sequence[CellTask]) -> list[Any | None]:
        """The jobs of an earlier driver that are still pending or running on Slurm, per task
        (one sacct call for all); None where there is none (never submitted, ended, another
        configuration, or the local executor)."""
        found = self._find_jobs(tasks)
        for task, job in zip(tasks, found, strict=True):
            if job is not None:
                self._tasks[str(job.job_id)] = task
        return found

    def _find_jobs(self, tasks: Sequence[CellTask]) -> list[Any | None]:
        doc = self._read_jobs()
        if doc.get("cluster") != self.cluster:
            return [None] * len(tasks)
        if self.cluster == "local":
            return [self._local_orphan(doc["cells"].get(t.out), t) for t in tasks]
        found: list[Any | None] = []
        for task in tasks:
            entry = doc["cells"].get(task.out)
            if not isinstance(entry, dict) or entry.get("key") != task.key:
                found.append(None)
                continue
            found.append(self._submitit.SlurmJob(self.folder / "%j", str(entry["job_id"])))
        known = [job for job in found if job is not None]
        if not known:
            return found
        known[0].get_info(mode="force")  # one sacct call updates every registered job
        return [
            job if job is not None and str(job.state).split()[0].upper() in ALIVE else None
            for job in found
        ]

    def _local_orphan(self, entry: Any, task: CellTask) -> Any | None:
        """A local-executor job of an earlier driver whose process still runs (after
        --no-wait): its controller's pid is the job id."""
        if not isinstance(entry, dict) or entry.get("key") != task.key:
            return None
        job = _LocalOrphan(self.folder / "%j", str(entry.get("job_id")))
        return None if job.done() else job

    def close(self) -> None:
        # submitit's local executor leaves an empty folder named after the '%j' pattern
        with contextlib.suppress(OSError):
            (self.folder / "%j").rmdir()

    # -- waiting --
    def poll(self, job: Any) -> Outcome | None:
        """The job's outcome from its JSON record once it wrote one; else, once its state says
        it ended, one line saying so (after a grace period for a COMPLETED job whose record
        may reach a network filesystem late). Never reads submitit's result pickle."""
        now = time.monotonic()
        job_id = str(job.job_id)
        if now < self._next_check.get(job_id, 0.0):
            return None
        self._next_check[job_id] = now + POLL_EVERY_S[self.cluster]
        where = f"slurm job {job_id}" if self.cluster == "slurm" else f"local job {job_id}"
        task = self._tasks.get(job_id)
        record = read_outcome(outcome_path(job.paths), task)
        if record is not None:
            return replace(record, where=f"{record.where} ({where})".strip())
        if not job.done():
            return None
        state = str(job.state)
        if (state.split() or ["?"])[0].upper() in ALIVE:
            return None  # a result file but a job still running (a planted file): wait for it
        first = self._ended.setdefault(job_id, now)
        if state.upper().startswith("COMPLETED") and now - first < RESULT_GRACE_S:
            return None  # its record is on its way through the filesystem
        return Outcome(
            False,
            error=f"the {where} ended ({state}) before the cell finished (a time limit, "
            f"memory, a node failure or a cancel){_log_reason(job.paths.stderr)}; its log: "
            f"{job.paths.stderr}",
            where=where,
        )

    def cancel(self, jobs: Sequence[Any]) -> None:
        if self.cluster == "slurm":
            ids = [str(job.job_id) for job in jobs]
            for i in range(0, len(ids), 200):  # one scancel for many array tasks
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["scancel", *ids[i : i + 200]], check=False, timeout=60)
            return
        for job in jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)


# --- the outcome record: what an array task says about its cell, as JSON ----------------------


def outcome_path(paths: Any) -> Path:
    """Where the array task of `paths` (submitit's JobPaths) records its cell's outcome."""
    return Path(paths.folder) / f"{paths.job_id}_{paths.task_id}_outcome.json"


def array_task(task: CellTask) -> None:
    """What each array task runs: `cell_entry`, then its outcome written as JSON beside the
    job's files (returns None: submitit's result pickle holds nothing the driver needs)."""
    import submitit

    from flexsample.workflows.bench import cell_entry
    from flexsample.workflows.outputs import write_json

    outcome = cell_entry(task)
    write_json(
        outcome_path(submitit.JobEnvironment().paths),
        {
            "format": OUTCOME_FORMAT,
            "key": task.key,
            "out": task.out,
            "attempt": task.attempt,
            "ok": outcome.ok,
            "error": outcome.error,
            "user_error": outcome.user_error,
            "where": outcome.where,
            "detail": outcome.detail,
        },
    )


def read_outcome(path: Path, task: CellTask | None = None) -> Outcome | None:
    """The Outcome recorded at `path` (JSON), or None: no record, unreadable, or the record of
    another cell than `task`. A finished cell's results come from its own results.json."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != OUTCOME_FORMAT:
        return None
    if task is not None and doc.get("key") != task.key:
        return None
    ok = doc.get("ok") is True
    results = None
    if ok:
        from flexsample.workflows.bench import read_cell

        record = read_cell(Path(task.out if task is not None else str(doc.get("out", ""))))
        results = record.results if record is not None else None
    return Outcome(
        ok,
        results=results,
        error=" ".join(str(doc.get("error") or "").split())[:500],
        user_error=doc.get("user_error") is True,
        where=str(doc.get("where") or "")[:200],
        detail=str(doc.get("detail") or "")[-20_000:],
    )


def _log_reason(stderr: Path) -> str:
    """': <the last exception line>' of a job's stderr log (text), or '' without one."""
    try:
        with open(stderr, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 20_000))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    line = _last_line(text)
    return "" if line == "no message" or not _EXC_LINE.match(line) else f": {line}"


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def _last_line(text: str) -> str:
    """The exception line of a traceback-bearing message, shortened to one line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln) <= {"-"}]
    for line in reversed(lines):
        if _EXC_LINE.match(line):
            return line[:300]
    return (lines[0] if lines else "no message")[:300]


class _LocalOrphan:
    """A local-executor job whose process an earlier driver started: alive while its
    submitit controller process runs; its outcome is read from its JSON record."""

    def __init__(self, folder: Path, job_id: str) -> None:
        from submitit.core.utils import JobPaths

        self.job_id = job_id
        self.folder = folder
        self.paths = JobPaths(folder, job_id=job_id, task_id=0)

    def _alive(self) -> bool:
        if not self.job_id.isdigit():
            return False
        proc = Path("/proc") / self.job_id
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            return False  # gone (or no /proc: no reattach)
        folder = str(self.folder)
        return status != "Z" and "submitit.local._local" in cmdline and folder in cmdline

    def done(self) -> bool:
        return not self._alive()

    @property
    def state(self) -> str:
        return "RUNNING" if self._alive() else "FINISHED"

    def cancel(self, check: bool = True) -> None:  # noqa: ARG002 - submitit's signature
        if self._alive():
            with contextlib.suppress(OSError):
                os.kill(int(self.job_id), signal.SIGINT)
