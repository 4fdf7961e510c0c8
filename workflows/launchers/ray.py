"""`--launcher ray`: each cell is one Ray task with `--cpus-per-cell` CPUs and
`--gpus-per-cell` GPUs, so Ray places and queues the cells (a laptop, a cloud or Kubernetes
cluster, Ray on Slurm) and this module only submits, polls and cancels.

The driver connects to the cluster at `--address` (or RAY_ADDRESS); without one it starts a
local Ray runtime over this machine's cores. A runtime already initialised in this process (a
notebook that called `ray.init`) is reused as it is and left running. The cells write into
--out, which every Ray node must see (a shared filesystem); `run_grid` checks it through a
token file each cell reads back. Workers need flexsample installed in the same version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from flexsample._optional import require
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import LAUNCHERS

from . import CellTask, Launcher, Outcome

ACCEPTED_ADDRESSES = (
    "auto (a cluster started with `ray start` on this machine), HOST:PORT (the head node's "
    "GCS address, e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray Client, e.g. ray://10.0.0.5:10001)"
)
CONNECT_TIMEOUT_S = 5.0  # a reachability check before ray.init, which retries for minutes


@dataclass
class RayJob:
    """One submitted cell: its Ray object reference and when it was submitted."""

    ref: Any
    label: str
    submitted: float


@LAUNCHERS.register("ray")
class RayLauncher(Launcher):
    """Cells as Ray tasks; `slots` is None, so the whole grid is submitted at once and Ray
    queues what the cluster cannot run yet (its resources decide how many run together)."""

    name = "ray"
    slots = None

    def __init__(
        self,
        address: Annotated[
            str | None,
            opt(
                "the cluster, auto or ray://HOST:PORT [default: RAY_ADDRESS, else a new local "
                "runtime]"
            ),
        ] = None,
        gpus_per_cell: Annotated[
            float | None,
            opt(
                "GPUs per cell, a fraction such as 0.5 shares one, 0 = the cell sees no GPU",
                ge=0,
            ),
        ] = 0.0,
        cpus_per_cell: Annotated[
            int | None, opt("threads (CPU cores) per cell [default: 1]", ge=1)
        ] = None,
        out: Path | str | None = None,
        num_cpus: Annotated[
            int | None, opt("a local runtime's CPUs [default: this machine's cores]", ge=1)
        ] = None,
    ) -> None:
        self._ray = require("ray", "cluster", "--launcher ray")
        cpus = 1 if cpus_per_cell is None else cpus_per_cell
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise FlexsampleError(
                f"--cpus-per-cell {cpus_per_cell} is out of range; accepted: an integer >= 1"
            )
        gpus = float(gpus_per_cell or 0.0)
        if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
            raise FlexsampleError(
                f"--gpus-per-cell {gpus_per_cell} is out of range; accepted: 0, a fraction "
                "below 1 (cells sharing a GPU) or a whole number of GPUs"
            )
        self.address = address
        self.cpus_per_cell = cpus
        self.gpus_per_cell = gpus
        self.out = Path(out) if out is not None else None
        self.num_cpus = num_cpus  # a local runtime's CPUs (default: this machine's cores)
        self.owns_runtime = False
        self.connected = False
        # one line for the CLI: where the cells go (start() says what it found)
        target = address or os.environ.get("RAY_ADDRESS")
        if self._ray.is_initialized():
            self.note = "Ray: cells go to the runtime already initialised in this process"
        elif target:
            self.note = f"Ray: cells go to the cluster at {target}"
        else:
            self.note = (
                f"Ray: no --address or RAY_ADDRESS, so a local Ray runtime with "
                f"{num_cpus or os.cpu_count() or 1} CPUs is started for this bench"
            )
        self._remote: Any = None

    # -- the runtime --
    def start(self, tasks: Sequence[CellTask]) -> None:
        ray = self._ray
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if ray.is_initialized():
            self.note = "Ray: using the runtime already initialised in this process"
        elif address:
            _connect(ray, address, "--address" if self.address else "RAY_ADDRESS")
            self.note = f"Ray: connected to the cluster at {address}"
            self.connected = True  # disconnect in close(); the cluster itself stays up
        else:
            self._start_local(ray)
            self.owns_runtime = True
        self._check_fits(ray, local=self.owns_runtime)
        self._remote = ray.remote(
            num_cpus=self.cpus_per_cell,
            num_gpus=self.gpus_per_cell,
            max_retries=0,  # the grid retries failed cells itself (--retries), with a record
        )(_run_cell)

    def _start_local(self, ray: Any) -> None:
        cpus = self.num_cpus or os.cpu_count() or 1
        # a runtime of the bench's own, on this machine: no notice on how to opt out of its
        # token authentication at every start
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        try:
            with _keep_signal_handlers():
                ray.init(
                    num_cpus=cpus,
                    include_dashboard=False,
                    log_to_driver=False,  # cells' output stays in the worker logs
                    logging_level=logging.WARNING,
                )
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions on start-up
            with contextlib.suppress(Exception):
                ray.shutdown()  # the processes of the half-started runtime
            raise FlexsampleError(
                f"--launcher ray could not start a local Ray runtime ({_first_line(exc)}); "
                "see /tmp/ray/session_latest/logs/raylet.err, or start one with `ray start "
                "--head` and pass --address auto"
            ) from None
        logs = _session_logs(ray)
        self.note = (
            f"Ray: started a local runtime with {cpus} CPUs (no --address or RAY_ADDRESS); "
            f"worker logs in {logs}"
        )

    def _check_fits(self, ray: Any, local: bool) -> None:
        """A cell that fits no node waits forever in Ray's queue: say so now. On a cluster
        that may add nodes (an autoscaler), only note it."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not nodes:
            return
        fits = any(
            r.get("CPU", 0) >= self.cpus_per_cell and r.get("GPU", 0) >= self.gpus_per_cell
            for r in nodes
        )
        if fits:
            return
        most_cpu = max(r.get("CPU", 0) for r in nodes)
        most_gpu = max(r.get("GPU", 0) for r in nodes)
        line = (
            f"--cpus-per-cell {self.cpus_per_cell} --gpus-per-cell {self.gpus_per_cell:g} fits "
            f"no node of the Ray cluster (the largest have {most_cpu:g} CPUs, {most_gpu:g} GPUs)"
        )
        if local:
            self.close()
            raise FlexsampleError(line + "; lower them")
        self.note += f"; warning: {line}, so cells wait for the autoscaler"

    def close(self) -> None:
        """Stop the runtime this bench started, or leave the cluster it connected to (a
        shutdown of a connected driver disconnects it; the cluster keeps running)."""
        if self.owns_runtime or self.connected:
            self.owns_runtime = self.connected = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # -- cells --
    def submit(self, tasks: Sequence[CellTask]) -> list[Any]:
        # Ray sets CUDA_VISIBLE_DEVICES for a task with GPUs and leaves it alone without:
        # a cell that asked for none must not take a GPU it was not given
        hide = {} if self.gpus_per_cell else {"CUDA_VISIBLE_DEVICES": ""}
        now = time.monotonic()
        return [
            RayJob(
                self._remote.remote(replace(t, threads=self.cpus_per_cell, env={**t.env, **hide})),
                t.label,
                now,
            )
            for t in tasks
        ]

    def poll(self, job: Any) -> Outcome | None:
        ray = self._ray
        ready, _ = ray.wait([job.ref], num_returns=1, timeout=0)
        if not ready:
            return None
        try:
            outcome = ray.get(job.ref)
        except ray.exceptions.RayError as exc:
            return Outcome(
                False, error=_ray_error_line(ray, exc), where="ray", detail=str(exc)[-20_000:]
            )
        if isinstance(outcome, Outcome):
            return outcome
        return Outcome(False, error=f"the Ray task returned {type(outcome).__name__}", where="ray")

    def cancel(self, jobs: Sequence[Any]) -> None:
        for job in jobs:
            with contextlib.suppress(Exception):
                self._ray.cancel(job.ref, force=True)


def _run_cell(task: CellTask) -> Outcome:
    """The Ray task: the same `cell_entry` every launcher runs (imported in the worker)."""
    from flexsample.workflows.bench import cell_entry

    return cell_entry(task)


def _connect(ray: Any, address: str, source: str) -> None:
    """ray.init(address=...), with one line (and no minutes of retries) when nothing answers."""
    target = address[len("ray://") :] if address.startswith("ray://") else address
    if address != "auto":
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise FlexsampleError(
                f"{source} '{address}' is not a Ray address; accepted: {ACCEPTED_ADDRESSES}"
            )
        try:
            socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise FlexsampleError(
                f"{source} {address}: no Ray cluster answers there ({reason}); accepted: "
                f"{ACCEPTED_ADDRESSES}"
            ) from None
    try:
        with _keep_signal_handlers():
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        raise FlexsampleError(
            f"{source} {address}: cannot connect to a Ray cluster ({_first_line(exc)}); "
            f"accepted: {ACCEPTED_ADDRESSES}"
        ) from None


@contextlib.contextmanager
def _keep_signal_handlers():  # type: ignore[no-untyped-def]
    """ray.init replaces the SIGTERM handler with sys.exit; the bench keeps its own, which
    cancels the running cells and leaves the finished ones."""
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to keep
            saved[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                if handler is not None:
                    signal.signal(sig, handler)


def _session_logs(ray: Any) -> str:
    with contextlib.suppress(Exception):
        return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs")
    return "/tmp/ray/session_latest/logs"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join((text[0] if text else type(exc).__name__).split())[:300]


def _ray_error_line(ray: Any, exc: BaseException) -> str:
    """One line for a cell whose Ray task died (the cell itself never raises)."""
    errors = ray.exceptions
    if isinstance(exc, getattr(errors, "OutOfMemoryError", ())):
        return "Ray killed the cell's worker: the node was running out of memory"
    if isinstance(exc, getattr(errors, "WorkerCrashedError", ())):
        return "the Ray worker running the cell died (killed by a signal or out of memory)"
    if isinstance(exc, getattr(errors, "NodeDiedError", ())):
        return "the Ray node running the cell died"
    if isinstance(exc, getattr(errors, "TaskCancelledError", ())):
        return "the cell's Ray task was cancelled"
    if isinstance(exc, getattr(errors, "RayTaskError", ())):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"
