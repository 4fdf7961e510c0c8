"""Launchers: where a bench grid's cells run. One interface, one small module per launcher.

A launcher takes `CellTask`s (plain, picklable values), starts each cell somewhere (this
process, local worker processes pinned to GPUs, Ray tasks, a Slurm job array through
submitit) and reports each cell's `Outcome`. The grid driver (`workflows.bench.run_grid`)
owns everything else: which cells run, retries, failure records, progress. A launcher never
decides what a cell computes: every cell is `workflows.bench.cell_entry(task)`, so the same
grid gives the same results whatever the launcher (at the same threads per cell).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flexsample.engine.errors import FlexsampleError

LAUNCHERS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class CellTask:
    """One attempt at one cell, as every launcher ships it.

    `threads` is the torch thread count inside the cell (0: torch's default) and `env` the
    environment set in the cell's process before torch starts (a GPU through
    CUDA_VISIBLE_DEVICES); the launcher fills both in.
    """

    config: dict[str, Any]
    out: str
    method: str
    baseline: bool
    key: str
    label: str
    attempt: int = 1
    threads: int = 0
    env: dict[str, str] = field(default_factory=dict)
    check_file: str = ""  # a file under --out that every worker must see (shared filesystem)
    check_token: str = ""
    log_to: tuple[str, ...] = ()  # experiment trackers of the cell (`--log-to`)
    log_dir: str = ""
    group: str = ""  # the bench's name for the trackers (MLflow experiment, W&B group)


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. `error` is one line; `user_error` marks bad input (a
    FlexsampleError: a bad value, a plugin that raised) as opposed to a crash or a kill."""

    ok: bool
    results: dict[str, Any] | None = None
    error: str = ""
    user_error: bool = False
    where: str = ""  # host / GPU / job id, for the failure record
    detail: str = ""  # the traceback, kept in the failure record (never printed)


class Launcher(ABC):
    """Submit cells, poll them, cancel them. `slots` is how many cells may run at once
    (None: submit everything; the cluster's scheduler queues what does not fit)."""

    name: str = ""
    slots: int | None = 1

    def start(self, tasks: Sequence[CellTask]) -> None:  # noqa: B027 - optional hook
        """Called once before the first submit with every task of the grid (start a runtime,
        check the shared folder)."""

    @abstractmethod
    def submit(self, tasks: Sequence[CellTask]) -> list[Any]:
        """Start these cells (at most the free slots); one opaque job handle per task."""

    @abstractmethod
    def poll(self, job: Any) -> Outcome | None:
        """The job's outcome once it ended, else None. Must not block for long."""

    @abstractmethod
    def cancel(self, jobs: Sequence[Any]) -> None:
        """Stop these jobs now; their cells stay unfinished (rerun later)."""

    def attach(self, tasks: Sequence[CellTask]) -> list[Any | None]:
        """Jobs submitted by an earlier driver and still alive, per task (None: not running).
        Launchers whose jobs outlive the driver (Slurm) override this."""
        return [None] * len(tasks)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what `start` took (worker processes, a local Ray runtime)."""

    @property
    def waits(self) -> bool:
        """False when the driver should return after submitting (Slurm --no-wait)."""
        return True


def get_launcher(name: str, **options: Any) -> Launcher:
    """The launcher called `name`, built with its options (see each module)."""
    if name == "local":
        from .local import LocalLauncher

        return LocalLauncher(**options)
    if name == "ray":
        from .ray import RayLauncher

        return RayLauncher(**options)
    if name == "slurm":
        from .slurm import SlurmLauncher

        return SlurmLauncher(**options)
    raise FlexsampleError(f"unknown --launcher '{name}'; accepted: {', '.join(LAUNCHERS)}")
