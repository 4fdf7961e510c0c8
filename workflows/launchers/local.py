"""This machine: cells in this process (`--jobs 1`) or in N worker processes, each worker
pinned to one GPU slot (`CUDA_VISIBLE_DEVICES`) and given its share of the cores.

One worker process per slot, kept for the slot's cells: its GPU is set before CUDA starts, so
a slot never changes device, and a worker that dies (a signal, the out-of-memory killer) costs
only its own cell, which the grid records and retries. Workers die with the bench process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Annotated, Any

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import LAUNCHERS

from . import CellTask, Launcher, Outcome


@dataclass(frozen=True)
class Slot:
    """Where one concurrently running cell goes: a GPU (None: no placement) and its threads
    (0: torch's default, for a single cell owning the machine)."""

    index: int
    gpu: str | None
    threads: int

    @property
    def env(self) -> dict[str, str]:
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": self.gpu}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ('0', '1', or UUIDs)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    ids = []
    for item in (x.strip() for x in env.split(",")):
        if not item or item.startswith("-"):
            break  # CUDA stops at the first invalid entry
        ids.append(item)
    return ids[:count]


def plan_slots(
    jobs: int,
    gpus: Sequence[str],
    cells_per_gpu: int = 1,
    cores: int | None = None,
    cpus_per_cell: int | None = None,
    device: str = "auto",
) -> list[Slot]:
    """One slot per concurrent cell: GPUs round-robin (so `--jobs G` puts one cell on each of
    G GPUs, and `--cells-per-gpu K` lets K share one), threads split so that the cells' threads
    add up to at most the cores.

    GPU placement applies to `--device auto` or `cuda`; `cpu` and an explicit `cuda:N` keep
    every cell where the flag says.
    """
    cores = cores or os.cpu_count() or 1
    if jobs < 1:
        raise FlexsampleError(f"--jobs {jobs} is out of range; accepted: an integer >= 1")
    if cells_per_gpu < 1:
        raise FlexsampleError(
            f"--cells-per-gpu {cells_per_gpu} is out of range; accepted: an integer >= 1"
        )
    if cpus_per_cell is not None:
        if cpus_per_cell < 1:
            raise FlexsampleError(
                f"--cpus-per-cell {cpus_per_cell} is out of range; accepted: an integer >= 1"
            )
        if jobs * cpus_per_cell > cores:
            raise FlexsampleError(
                f"--jobs {jobs} x --cpus-per-cell {cpus_per_cell} = {jobs * cpus_per_cell} "
                f"threads, more than the {cores} cores here; lower one of them"
            )
        threads = cpus_per_cell
    else:
        threads = 0 if jobs == 1 else max(1, cores // jobs)
    place = device in ("auto", "cuda") and len(gpus) > 0
    if place and jobs > len(gpus) * cells_per_gpu:
        raise FlexsampleError(
            f"--jobs {jobs} needs {jobs} GPU slots but this machine has {len(gpus)} GPU(s) x "
            f"--cells-per-gpu {cells_per_gpu} = {len(gpus) * cells_per_gpu}; lower --jobs, "
            "raise --cells-per-gpu, or pass --device cpu"
        )
    return [Slot(i, gpus[i % len(gpus)] if place else None, threads) for i in range(jobs)]


@LAUNCHERS.register("local")
class LocalLauncher(Launcher):
    """`--launcher local` (the default): `jobs` cells at a time on this machine."""

    name = "local"

    def __init__(
        self,
        jobs: Annotated[
            int,
            opt(
                "cells at once; with G GPUs each cell gets its own GPU (jobs <= G x "
                "cells_per_gpu), and the cores are split between the cells",
                ge=1,
            ),
        ] = 1,
        cells_per_gpu: Annotated[int, opt("cells sharing one GPU", ge=1)] = 1,
        cpus_per_cell: Annotated[
            int | None, opt("threads (CPU cores) per cell [default: cores / jobs]", ge=1)
        ] = None,
        device: str = "auto",
        gpus: Sequence[str] | None = None,
        cores: int | None = None,
    ) -> None:
        if gpus is None:
            gpus = visible_gpus() if device in ("auto", "cuda") else []
        self.plan = plan_slots(jobs, gpus, cells_per_gpu, cores, cpus_per_cell, device)
        self.slots = jobs
        self._pools: dict[int, ProcessPoolExecutor] = {}
        self._busy: dict[int, Future[Outcome] | None] = {s.index: None for s in self.plan}

    # -- in this process (--jobs 1) --
    def _inline(self, task: CellTask) -> Outcome:
        """The cell in this process, on the device `--device` picks: no CUDA_VISIBLE_DEVICES
        (it would pin this process, a notebook's say, to one GPU for good)."""
        import torch

        from flexsample.workflows.bench import cell_entry

        before = torch.get_num_threads()
        try:
            return cell_entry(task)
        finally:
            torch.set_num_threads(before)

    def submit(self, tasks: Sequence[CellTask]) -> list[Any]:
        jobs = []
        for task in tasks:
            slot = next(s for s in self.plan if self._busy[s.index] is None)
            if len(self.plan) == 1:
                fut: Future[Outcome] = Future()
                fut.set_running_or_notify_cancel()
                fut.task = replace(task, threads=slot.threads)  # type: ignore[attr-defined]
            else:
                placed = replace(task, threads=slot.threads, env={**task.env, **slot.env})
                fut = self._pool(slot).submit(_run_in_worker, placed)
            self._busy[slot.index] = fut
            jobs.append((slot, fut))
        return jobs

    def poll(self, job: Any) -> Outcome | None:
        slot, fut = job
        task = getattr(fut, "task", None)
        if task is not None and not fut.done():  # --jobs 1: the cell runs now, in this thread
            fut.set_result(self._inline(task))
        if not fut.done():
            return None
        self._busy[slot.index] = None
        try:
            return fut.result()
        except BrokenProcessPool:
            self._drop(slot)
            return Outcome(
                False,
                error="the cell's worker process died (killed by a signal or the "
                "out-of-memory killer)",
                where=f"local slot {slot.index}",
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a task that cannot be sent to a worker
            return Outcome(False, error=f"{type(exc).__name__}: {exc}", where="local")

    def cancel(self, jobs: Sequence[Any]) -> None:
        for slot, _ in jobs:
            self._drop(slot)

    def close(self) -> None:
        for index in list(self._pools):
            self._drop(self.plan[index])

    def _pool(self, slot: Slot) -> ProcessPoolExecutor:
        if slot.index not in self._pools:
            self._pools[slot.index] = ProcessPoolExecutor(
                1,
                mp_context=get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(), slot.env),
            )
        return self._pools[slot.index]

    def _drop(self, slot: Slot) -> None:
        """Stop a slot's worker now (its running cell stays unfinished) and forget it."""
        pool = self._pools.pop(slot.index, None)
        self._busy[slot.index] = None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(5)
                if p.is_alive():
                    p.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_in_worker(task: CellTask) -> Outcome:
    """A worker never receives the user's Ctrl-C (it ignores SIGINT): an interrupt raised in
    it comes from the cell, and is that cell's failure, not the grid's."""
    from flexsample.workflows.bench import cell_entry

    try:
        return cell_entry(task)
    except BaseException as exc:  # noqa: BLE001
        name = type(exc).__name__
        return Outcome(False, error=f"{name}: {exc}" if str(exc) else name, where="local worker")


# --- worker processes ------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """Make this process exit when process `parent` dies, so no orphan keeps running cells.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Everywhere:
    a daemon thread exits the process once os.getppid() is no longer `parent`.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # died before the line above took effect
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent, interval), name="flexsample-watch-parent", daemon=True
    ).start()


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _worker_init(parent: int, env: dict[str, str]) -> None:
    """A slot's worker: its GPU before anything starts CUDA; Ctrl-C reaches the whole process
    group, and the bench process decides what stops, so workers ignore SIGINT (SIGTERM keeps
    its default: exit); they die with the bench process."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)
