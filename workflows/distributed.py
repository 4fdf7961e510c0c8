"""A run under torchrun: process group set-up, the device of each rank, and shared failure.

`torchrun --nproc-per-node N -m flexsample run ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK set. `start(cfg)` joins them into one process group: NCCL when the
run is on CUDA (each rank on GPU LOCAL_RANK), gloo on a CPU, with `cfg.dist_timeout` on every
collective so a rank that died or hangs ends the others instead of blocking them forever.

Failure: the first rank that fails writes its one-line message and exit code into the group's
key-value store (the c10d store torchrun already runs) before it exits. A rank that then
finds itself failing for a reason that is not its own (a collective broken by the dead peer,
its timeout, or torchrun's SIGTERM to the survivors) reports that first message and code
instead, so every rank ends with the same line and the same code.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexsample.engine.errors import FlexsampleError

if TYPE_CHECKING:  # torch is imported when a run starts, not by the error path of the CLI
    import torch

    from flexsample.engine.distributed import Ranks

_ERROR_KEY = "flexsample/error"
_FIRST_KEY = "flexsample/failures"


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or another launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class DistributedRun:
    """This process's part of a torchrun job."""

    ranks: Ranks
    local_rank: int
    device: torch.device
    backend: str


def launch_device(name: str, local_rank: int) -> torch.device:
    """The device of a rank: GPU LOCAL_RANK for auto/cuda when CUDA is here, else the CPU."""
    import torch

    if name.startswith("cuda:"):
        raise FlexsampleError(
            f"--device {name} under torchrun: each rank takes GPU LOCAL_RANK; pass --device "
            "cuda (or auto), and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise FlexsampleError(f"unknown --device '{name}'; accepted: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise FlexsampleError("--device cuda: CUDA is not available here; use auto or cpu")
    if local_rank >= torch.cuda.device_count():
        raise FlexsampleError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) here; "
            "start at most that many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def start(device_name: str, timeout_s: float) -> DistributedRun | None:
    """Join the torchrun job this process belongs to (None when it runs alone)."""
    if not launched():
        return None
    import torch
    import torch.distributed as dist

    from flexsample.engine.distributed import Ranks

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = launch_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    return DistributedRun(Ranks(), local_rank, device, backend)


def finish(run: DistributedRun | None) -> None:
    """Leave the process group after a run that ended well on every rank."""
    if run is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        run.ranks.barrier()
        dist.destroy_process_group()


_STORE: list[Any] = []


def _store() -> Any:
    """The job's key-value store: torchrun's own (its agent keeps it, so it outlives any
    rank, and it is there before a process group exists), else the process group's."""
    if _STORE:
        return _STORE[0]
    store = None
    try:
        import torch.distributed as dist

        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=datetime.timedelta(seconds=5),
            )
        elif dist.is_available() and dist.is_initialized():
            from torch.distributed.distributed_c10d import _get_default_store

            store = _get_default_store()
    except Exception:  # noqa: BLE001 (no store: each rank reports its own failure)
        store = None
    _STORE.append(store)
    return store


def record_failure(message: str, code: int) -> tuple[str, int]:
    """Record this rank's failure unless another rank failed first; return the failure to
    report (the first one: the cause, not its echo on the other ranks)."""
    store = _store()
    if store is None:
        return message, code
    try:
        if int(store.add(_FIRST_KEY, 1)) == 1:
            store.set(_ERROR_KEY, f"{code} {message}")
            return message, code
        deadline = time.monotonic() + 5  # the first one may still be writing its line
        while not store.check([_ERROR_KEY]) and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = store.get(_ERROR_KEY).decode("utf-8", "replace")
        first_code, _, first_message = raw.partition(" ")
        return first_message, int(first_code)
    except Exception:  # noqa: BLE001 (the store went away with the job: report our own)
        return message, code


def exit_now(code: int) -> None:
    """Leave at once with `code` (under torchrun): the job's agent sends SIGTERM to every
    rank as soon as one exits, and a slow interpreter shutdown would turn this rank's code
    into a death by that signal."""
    import signal
    import sys

    with contextlib.suppress(Exception):
        signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
