"""Holding Ctrl-C and SIGTERM back while a write must not be cut.

`torch.save` to a Python file object writes from C++ through the object's `write`. An
exception raised there by a signal handler (KeyboardInterrupt, or the command line's
Terminated) does not come out as itself: torch reports a RuntimeError ("unexpected pos"), or
the process aborts when it lands while the archive is being closed. Inside
`deferred_interrupts()` the two signals are only recorded; when the block ends, the handlers
that were there are put back and the first signal received is sent again, so it arrives as
usual, just after the block.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM held back during the block, then delivered once, in the main thread.

    Only signals whose handler is Python code are held (those raise exceptions); one that is
    ignored or kills the process by default keeps doing so. Outside the main thread (where
    handlers cannot be changed) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    saved = {}
    for sig in _SIGNALS:
        handler = signal.getsignal(sig)
        if callable(handler):
            saved[sig] = handler
            signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])
