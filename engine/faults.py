"""Fault injection: make the process die or fail at a named point, to test recovery.

`FLEXSAMPLE_FAULT=POINT[:ACTION][@N]` fires at the N-th time (default 1) this process reaches
`fault_point(POINT)`. Several faults may be given, separated by commas. Actions:

- `kill` (default): SIGKILL this process, as a power cut or the OOM killer would;
- `oom`: raise `torch.OutOfMemoryError` (what CUDA raises when memory runs out);
- `disk-full`: raise `OSError(ENOSPC)`, as a write to a full disk does;
- `interrupt`: raise `KeyboardInterrupt`, as Ctrl-C does.

Points are named where the code calls `fault_point`; `POINTS` lists them. Unset, the check is
one dictionary lookup. Under torchrun, `FLEXSAMPLE_FAULT_RANK=R` makes the faults fire in the
process of global rank R only (one rank failing while the others go on).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "FLEXSAMPLE_FAULT"
RANK_ENV = "FLEXSAMPLE_FAULT_RANK"
ACTIONS = ("kill", "oom", "disk-full", "interrupt")
POINTS = {
    "train-epoch": "after an epoch's training, before its validation and checkpoint",
    "query": "after a query grew the pool, before the next checkpoint",
    "scoring": "inside a query's scoring pass, after its first batch (once per pass)",
    "checkpoint-write": "a checkpoint's temporary file half written (every save, best.pt too)",
    "checkpoint-rename": "a checkpoint's temporary file complete, before any rename",
    "checkpoint-rotate": "between the two renames of a checkpoint rotation (checkpoint.pt)",
    "evaluation": "after training, before the test evaluation",
    "bench-cell": (
        "in a bench cell, after its run wrote results.json, before cell.json marks it finished"
    ),
}

_hits: dict[str, int] = {}


def _parse(spec: str) -> list[tuple[str, str, int]]:
    faults = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, count = part.partition("@")
        point, _, action = point.partition(":")
        action = action or "kill"
        if point not in POINTS or action not in ACTIONS:
            raise ValueError(
                f"{ENV}={spec!r}: expected POINT[:ACTION][@N] with POINT in "
                f"{', '.join(POINTS)} and ACTION in {', '.join(ACTIONS)}"
            )
        faults.append((point, action, int(count or 1)))
    return faults


def fault_point(point: str) -> None:
    """Fire the fault configured for `point` when its hit count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    only = os.environ.get(RANK_ENV)
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    n = _hits[point] = _hits.get(point, 0) + 1
    for name, action, at in _parse(spec):
        if name == point and n == at:
            _fire(point, action)


def _fire(point: str, action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "oom":
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected at {point})")
    if action == "disk-full":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")
    raise KeyboardInterrupt
