"""The `flexsample` command line.

This module stays import-light (no torch, no typer): `cli.app` imports it first to handle
Ctrl-C and SIGTERM from the very start of its own, slow imports.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_SIGINT = 130
EXIT_SIGTERM = 143

_received: list[int] = []
_reported: list[bool] = []  # a command printed its own line for an interrupt
# signals whose exception has not reached a handler yet: one raised inside a C extension's
# callback (pydantic-core building a validator, a __del__) is "ignored" there, not raised
_pending: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup path runs; the command exits 143."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    _pending.append(signum)
    raise Terminated()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    raise KeyboardInterrupt


def _unraisable(hook_args: object) -> None:
    """An interrupt raised where Python cannot raise it stays pending, without a traceback;
    `raise_pending_interrupt` raises it again at the next safe point."""
    exc_type = getattr(hook_args, "exc_type", None)
    if isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt) and _pending:
        return
    sys.__unraisablehook__(hook_args)  # type: ignore[arg-type]


def install_signal_handlers() -> None:
    """SIGTERM raises `Terminated`, Ctrl-C KeyboardInterrupt; both are remembered until a
    handler catches them, so that one swallowed by a C extension is raised again."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _unraisable


def interrupt_handled() -> None:
    """An interrupt reached its handler: nothing is pending any more."""
    _pending.clear()


def raise_pending_interrupt() -> None:
    """Raise the interrupt a C extension swallowed (Ctrl-C or SIGTERM that arrived while it
    ran), at a point where it can propagate: start-up's end and each phase of a command."""
    if not _pending:
        return
    signum = _pending[-1]
    _pending.clear()
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt


def sigterm_received() -> bool:
    """Whether this process got SIGTERM (to tell 143 from 130 where the type was lost)."""
    return bool(_received)


def mark_interrupt_reported() -> None:
    """A command printed its line for an interrupt: the exit path adds none."""
    _reported.append(True)


def interrupt_reported(reset: bool = False) -> bool:
    """Whether a command printed its interrupt line (`reset`: forget it, for a new command)."""
    seen = bool(_reported)
    if reset:
        _reported.clear()
    return seen


def interrupt_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (128 + the signal number, as shells report)."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def interrupt_name(exc: BaseException) -> str:
    """How an interrupt is named in its one line."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


@contextlib.contextmanager
def startup_guard() -> Iterator[None]:
    """An interrupt during start-up: one line and the signal's exit code, never a traceback."""
    try:
        yield
    except KeyboardInterrupt as exc:
        interrupt_handled()
        line, code = f"{interrupt_name(exc)} during start-up; nothing was written", None
        with contextlib.suppress(Exception):  # a torch-free import
            from flexsample.workflows.distributed import exit_now, launched, record_failure

            if launched():  # torchrun stops the others when one rank fails: report that one
                line, code = record_failure(line, interrupt_exit_code(exc))
        with contextlib.suppress(Exception):
            sys.stderr.write(line + "\n")
        if code is not None:
            exit_now(code)
        raise SystemExit(interrupt_exit_code(exc)) from None


def main() -> None:
    """Console-script entry point that guards even the import of the app."""
    install_signal_handlers()
    with startup_guard():
        from .app import main as app_main

        raise_pending_interrupt()  # one that arrived while a C extension was importing
        app_main()
