"""How a workflow tells its caller what it is doing, without knowing where that goes.

A `Reporter` receives named phases (loading, anchor features, SSL pre-training, evaluation)
and counted tasks inside them (images decoded, SSL epochs). The base class is silent; the CLI
supplies one that draws rich bars on a terminal and prints plain lines in a job log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Reporter:
    """Silent by default: every hook is optional for callers of the Python API."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A stretch of work worth naming in a job log (with its elapsed time)."""
        yield

    @contextlib.contextmanager
    def task(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        """A counted piece of long work; the yielded function advances it by n."""
        yield lambda n=1: None

    def message(self, text: str) -> None:
        """A one-off note (a fallback taken, a resume point)."""
