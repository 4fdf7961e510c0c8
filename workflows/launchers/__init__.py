"""Launchers: where a bench grid's cells run. One interface, one small module per launcher.

A launcher takes `CellTask`s (plain, picklable values), starts each cell somewhere (this
process, local worker processes pinned to GPUs, Ray tasks, a Slurm job array through
submitit) and reports each cell's `Outcome`. The grid driver (`workflows.bench.run_grid`)
owns everything else: which cells run, retries, failure records, progress. A launcher never
decides what a cell computes: every cell is `workflows.bench.cell_entry(task)`, so the same
grid gives the same results whatever the launcher (at the same threads per cell).

Launchers are an open extension point like estimators: each built-in registers itself in the
`LAUNCHERS` registry (`@LAUNCHERS.register("local")`) and an installed package adds its own
through the entry-point group `flexsample.launchers`. A launcher's options are its
constructor's keyword parameters (`Annotated[type, opt(help, ge=...)]`); an option of another
launcher is refused because the chosen one does not declare it (`launcher_options`). The
bench supplies the run-time arguments `out` (the bench folder) and `device` (`--device`) to
the launchers whose constructors take them.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import OptionError, Options, closest, describe_option
from flexsample.engine.registry import LAUNCHERS


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
    # option -> the `flexsample bench` flag that sets it, where it is not --<option-with-dashes>
    flags: ClassVar[dict[str, str]] = {}

    @classmethod
    def flag(cls, option: str) -> str:
        """The `flexsample bench` flag that sets `option` (for messages)."""
        return cls.flags.get(option) or "--" + option.replace("_", "-")

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


def launcher_names() -> list[str]:
    """Every registered launcher: the built-ins and those installed packages add."""
    return LAUNCHERS.names()


def check_launcher(name: str) -> str:
    """`name` if a launcher is registered under it, else one line listing the accepted ones."""
    if name in LAUNCHERS:
        return LAUNCHERS.resolve(name)
    names = LAUNCHERS.names()
    raise FlexsampleError(
        f"unknown --launcher '{name}'{closest(name, names)}; accepted: {', '.join(names)}"
    )


def _flag(option: str) -> str:
    """The flag of `option` as the launchers that declare it spell it."""
    for other in LAUNCHERS.names():
        if option in LAUNCHERS.options(other).model_fields:
            return LAUNCHERS.get(other).flag(option)  # type: ignore[attr-defined, no-any-return]
    return "--" + option.replace("_", "-")


def launcher_options(name: str, values: Mapping[str, Any]) -> Options:
    """`values` checked against the options launcher `name` declares.

    An option the launcher does not declare is refused: when other launchers declare it, one
    line says which (`--partition applies to --launcher slurm, not local`); a value outside
    what the launcher accepts is one line naming the flag and the accepted values.
    """
    name = check_launcher(name)
    try:
        return LAUNCHERS.resolve_options(name, values)
    except OptionError as exc:
        option = exc.option
        if option is None:
            raise
        fields = LAUNCHERS.options(name).model_fields
        if option not in fields:
            takers = [
                other
                for other in LAUNCHERS.names()
                if option in LAUNCHERS.options(other).model_fields
            ]
            if not takers:
                raise
            raise FlexsampleError(
                f"{_flag(option)} applies to --launcher {' or '.join(takers)}, not {name}"
            ) from None
        flag = LAUNCHERS.get(name).flag(option)  # type: ignore[attr-defined]
        value = values[option]
        accepted = describe_option(fields[option])
        tail = f"; accepted: {accepted}" if accepted else ""
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise FlexsampleError(f"{flag} {value:g} is out of range{tail}") from None
        raise FlexsampleError(f"invalid {flag} {value!r}{tail}") from None


def build_launcher(name: str, options: Mapping[str, Any] | Options, /, **runtime: Any) -> Launcher:
    """Launcher `name` with its checked `options` (`launcher_options`) and those of the
    `runtime` arguments (`out`, `device`) its constructor takes."""
    name = check_launcher(name)
    if not isinstance(options, Options):
        options = launcher_options(name, options)
    return LAUNCHERS.build(name, options, **_taken(LAUNCHERS.get(name), runtime))  # type: ignore[no-any-return]


def _taken(factory: Any, runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The run-time arguments `factory` takes (all of them with a **kwargs)."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return dict(runtime)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(runtime)
    return {k: v for k, v in runtime.items() if k in params}


def get_launcher(name: str, **options: Any) -> Launcher:
    """The launcher called `name`, built with its options (see each module); run-time
    arguments (`LAUNCHERS.runtime`: out, device ...) may be passed among them."""
    runtime = {k: options.pop(k) for k in list(options) if k in LAUNCHERS.runtime}
    return build_launcher(name, options, **runtime)


# the built-in launchers, one module each, registered in LAUNCHERS (imported last: they
# subclass Launcher); others come from the entry-point group `flexsample.launchers`
from . import local, ray, slurm  # noqa: E402, F401
