"""Progress of long data work (file checks, cache decoding) reported to whatever the caller passed.

Lives in datasets/, below training/ and workflows/, so data and training code can report
progress without importing the layers above them. Split out of `images.py`, whose modules
(`cache.py`, `images.py`) and `training/` all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Advance = Callable[[int], None]


@contextlib.contextmanager
def progress_task(progress: Any, name: str, total: int) -> Iterator[Advance]:
    """An `advance(n)` function for a long loop, whatever the caller passed as `progress`.

    `progress` may be None (silent), a reporter (anything with `task(name, total)`, such as
    `flexsample.workflows.progress.Reporter`; it then shows a bar or plain lines), or a plain
    callable `advance(n)`. Lives here, below training/ and workflows/, so datasets and training
    code can report without importing the layers above them.
    """
    if progress is None:
        yield lambda n=1: None
    elif hasattr(progress, "task"):
        with progress.task(name, int(total)) as advance:
            yield advance
    elif callable(progress):
        yield progress
    else:
        raise TypeError(f"progress must be a reporter, a callable or None, not {progress!r}")
