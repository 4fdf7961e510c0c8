"""The `flexsample` command: run, eval, list (and the commands of later modules).

Every failure ends as one line on stderr: bad input and file-system errors exit 2, usage
errors (click's) too, bugs exit 1 ("internal error"), Ctrl-C 130 and SIGTERM 143, at any
moment, start-up included (the console script, `flexsample.cli:main`, imports this module
under `startup_guard`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from rich.console import Console
from typer.core import TyperGroup

from flexsample._version import __version__
from flexsample.cli import (
    install_signal_handlers,
    interrupt_exit_code,
    interrupt_handled,
    interrupt_name,
    interrupt_reported,
    mark_interrupt_reported,
    raise_pending_interrupt,
    sigterm_received,
)
from flexsample.engine.errors import FlexsampleError, ParameterError
from flexsample.workflows.config import RunConfig

try:  # typer >= 0.29 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the click package
    from click import exceptions as click_errors


class OneLineErrors(TyperGroup):
    """Click's usage errors (unknown flag, `--workers 1e23`) as one line on stderr, exit 2.

    Typer would draw a multi-line box; runs under `CliRunner` and the console script alike
    come through here. Ctrl-C outside a command's own handling still exits 130 (143 for
    SIGTERM).
    """

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        interrupt_reported(reset=True)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            text = exc.format_message()  # rich help is printed as it is made: text is empty
            if text.strip():
                typer.echo(text)
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:
            msg = " ".join(exc.format_message().split())
            where = exc.ctx.command_path if exc.ctx else "flexsample"
            with contextlib.suppress(typer.Exit):
                _fail("error: ", f"{msg} (see '{where} --help')", exc.exit_code)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            with contextlib.suppress(typer.Exit):
                _fail("error: ", " ".join(exc.format_message().split()), exc.exit_code)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        code = rv if isinstance(rv, int) else 0
        if code == 130 and sigterm_received():
            code = 143
        if code in (130, 143) and not interrupt_reported():
            # an interrupt outside a command's own handling (typer turns it into exit 130)
            what = "terminated (SIGTERM)" if code == 143 else "interrupted"
            err_console.print(what, highlight=False, markup=False)
        sys.exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


app = typer.Typer(
    cls=OneLineErrors,
    name="flexsample",
    help=(
        "Flexible Sampling for long-tailed classification: grow the training subset from a "
        "class-balanced start to the full long-tailed set, choosing informative samples with "
        "pluggable estimators and schedules."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Bad input -> one line on stderr and exit code 2; bugs -> exit 1; --debug shows traces.

    Ctrl-C -> exit 130, SIGTERM -> 143, with the resume command when a checkpoint exists.
    File-system errors (full disk, read-only, not a folder) are bad input too: exit 2.
    """
    from flexsample.workflows.rundir import ENVIRONMENT_ERRNOS, resume_command

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        interrupt_handled()
        if debug:
            traceback.print_exc()
        what = interrupt_name(exc)
        out = getattr(exc, "resume_out", None)
        tail = f"; resume with: {resume_command(out)}" if out is not None else ""
        mark_interrupt_reported()
        _fail("", f"{what}{tail}", interrupt_exit_code(exc))
    except FlexsampleError as exc:
        if debug:
            traceback.print_exc()
        text = exc.as_flags() if isinstance(exc, ParameterError) else str(exc)
        _fail("error: ", " ".join(text.split()), 2)
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            _internal(exc, debug)
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        _fail("error: ", where + (exc.strerror or str(exc)), 2)
    except Exception as exc:
        _internal(exc, debug)


def _fail(label: str, text: str, code: int) -> None:
    """Print one line on stderr and exit with `code`. Under torchrun the first failing rank's
    line and code win: a rank whose collective broke because a peer died says why the peer
    died, with the peer's code, instead of its own echo of it."""
    from flexsample.workflows.distributed import exit_now, launched, record_failure

    if launched():
        # the agent SIGTERMs every rank once one exits: a rank that fails as fast as its
        # peers (a bad flag is found before torch is imported) finishes its line first
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        line, code = record_failure(label + text, code)
        err_console.print(line, highlight=False, soft_wrap=True, markup=False)
        exit_now(code)
    styled = f"[bold red]{label}[/bold red]{_escape(text)}" if label else _escape(text)
    err_console.print(styled, highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A deprecation notice (FutureWarning) as one 'warning: ...' line on stderr; other
    warnings as Python shows them."""
    if issubclass(category, FutureWarning):
        text = " ".join(str(message).split())
        err_console.print(
            f"[yellow]warning:[/yellow] {_escape(text)}", highlight=False, soft_wrap=True
        )
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _internal(exc: Exception, debug: bool) -> None:
    """A bug: one line (the traceback with --debug), exit 1."""
    if debug:
        traceback.print_exc()
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    _fail("internal error: ", f"{text} (rerun with --debug for the traceback)", 1)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flexsample {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Flexible Sampling for long-tailed classification."""


OPT_SUFFIX = "_opt"  # --estimator-opt KEY=VALUE -> RunConfig.estimator_options


def _config_options() -> list[inspect.Parameter]:
    """The run's flags, so the CLI, config files and docs never drift apart: one per run-wide
    RunConfig field, one per option shortcut (`--knn`, `--patience`: the option's type and
    help come from the built-in components that declare it, through the catalogue), and
    `--<kind>-opt KEY=VALUE` for any option of the chosen component, a plugin's included."""
    from flexsample.engine.options import describe_option
    from flexsample.engine.specs import CombineOptions
    from flexsample.workflows.components import KINDS, SHORTCUTS

    from .catalogue import OPTIONS

    params = []
    for name, field in RunConfig.model_fields.items():
        if name.endswith("_options"):
            continue
        panel = (field.json_schema_extra or {}).get("panel")
        default = field.default if field.default_factory is None else []
        shown = "none" if default is None else default
        text = f"{field.description} \\[default: {shown}]"
        ann = field.annotation
        if name == "plugin":
            typ: Any = list[str]
        elif get_origin(ann) is Literal:
            typ = str
        else:
            args = [a for a in get_args(ann) if a is not type(None)]
            typ = args[0] if args else ann
        params.append(_flag(name, typ, text, panel))
    for name, kind in SHORTCUTS.items():
        rows = [r for r in OPTIONS if r[0] == kind and r[2] == name]
        if not rows and name in CombineOptions.model_fields:  # the '+' combination's own
            info = CombineOptions.model_fields[name]
            text = (
                f"{info.description} (accepted: {describe_option(info)}); an option of any "
                f"'+' estimator combination \\[default: {info.default}]"
            )
            params.append(_flag(name, str, text, PANELS[kind]))
            continue
        if not rows:
            continue
        _, _, _, type_, default, accepted, help_ = rows[0]
        who = ", ".join(sorted({r[1] for r in rows}))
        values = {r[4] for r in rows}
        shown = default if len(values) == 1 else "the component's own"
        tail = f" (accepted: {accepted})" if accepted else ""
        text = f"{help_}{tail}; an option of {kind} {who} \\[default: {shown}]"
        typ = {"int": int, "float": float, "bool": bool}.get(type_, str)
        params.append(_flag(name, typ, text, PANELS[kind]))
    for kind in (*KINDS, "recipe"):
        text = (
            f"KEY=VALUE: an option of the chosen {kind}, a plugin's included (repeatable); "
            f"`flexsample list {kind}` shows each {kind}'s options"
        )
        params.append(_flag(f"{kind.replace('-', '_')}{OPT_SUFFIX}", list[str], text, "Options"))
    return params


PANELS = {
    "dataset": "Data",
    "estimator": "Scoring",
    "policy": "Curriculum",
    "allocation": "Curriculum",
    "anchors": "Curriculum",
    "loss": "Long-tail baselines",
    "sampler": "Long-tail baselines",
}


def _flag(name: str, typ: Any, text: str, panel: str | None) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    if typ is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    option = typer.Option(None, flag, help=text, rich_help_panel=panel, show_default=False)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typ | None
    )


def option_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The parsed flags as `flexsample.run` overrides: each `--<kind>-opt KEY=VALUE` list
    becomes that kind's `<kind>_options` section (values stay text: each option's type
    converts them, and refuses what it cannot)."""
    out = {}
    for key, value in flags.items():
        if not key.endswith(OPT_SUFFIX):
            out[key] = value
            continue
        kind = key[: -len(OPT_SUFFIX)]
        section: dict[str, str] = {}
        for item in value or []:
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise FlexsampleError(
                    f"--{kind}-opt '{item}': expected KEY=VALUE, e.g. --{kind}-opt name=3"
                )
            section[k.strip().replace("-", "_")] = v
        if section:
            out[f"{kind}_options"] = section
    return out


def run(
    out: Path = typer.Option(
        None, help="run folder \\[default: runs/<timestamp>-<estimator>-<policy>]"
    ),
    config: Path = typer.Option(
        None, help="TOML, YAML or a run's config.json; flags override its values"
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as JSON and exit"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out from its last checkpoint"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars or tables"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    log_to: str = typer.Option(
        None,
        "--log-to",
        help="experiment trackers, any of tensorboard,mlflow,wandb,csv (comma-separated) "
        "\\[default: none]; MLflow uses MLFLOW_TRACKING_URI, else ./mlruns; W&B runs offline "
        "unless you are logged in (WANDB_MODE is respected)",
    ),
    log_dir: Path = typer.Option(
        None,
        "--log-dir",
        help="TensorBoard, CSV and W&B files go to LOG_DIR/<run folder name> \\[default: in "
        "the run folder: tensorboard/, logs/, wandb/; WANDB_DIR wins for W&B]",
    ),
    **flags: Any,
) -> None:
    """Train with Flexible Sampling and write a run folder.

    With no arguments: the embedded digits-lt (r = 100), prototype anchors, MC-dropout BALD, a linear schedule with difficulty-aware allocation, on the best device found.

    Writes config.json, rounds.jsonl, selection.npz, scores.npz, results.json, curves.png, checkpoint.pt and best.pt into the run folder. Flags override values of --config; a flag of a component that was not chosen is refused. Each component's options: `flexsample list NAME`.
    """  # noqa: E501 (typer keeps line breaks: one line per paragraph)
    with user_errors(debug):
        from flexsample.workflows import api

        from .console import ProgressDisplay, metrics_table, result_columns, rounds_table

        overrides = option_flags(flags)
        if print_config:
            cfg, from_recipe = api.explain(config, overrides)
            typer.echo(json.dumps(cfg.model_dump(), indent=2))
            if from_recipe:  # on stderr: stdout stays a config file --config loads
                err_console.print(
                    f"from --recipe {cfg.recipe} (flags and --config override them): "
                    + ", ".join(from_recipe),
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                )
            raise typer.Exit()
        start = time.perf_counter()
        hooks = api.Hooks(
            callbacks=lambda cfg: (
                []
                if quiet
                else [ProgressDisplay(console, cfg.rounds * cfg.epochs_per_round, start)]
            ),
            reporter=_reporter(quiet, start),
        )
        raise_pending_interrupt()
        result = api.run(
            config,
            out=out,
            overwrite=overwrite,
            resume=resume,
            log_to=log_to,
            log_dir=log_dir,
            hooks=hooks,
            **overrides,
        )
        if not result.main_rank:
            return
        if result.already_finished:
            console.print(
                f"run {result.run_dir} is already finished (results.json); nothing to resume, "
                "nothing changed. Pass --overwrite to run it again.",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
            return
        if not quiet:
            outcome = result.outcome
            console.print(rounds_table(outcome.records, outcome.class_names))
            console.print(metrics_table(result_columns(result.results), outcome.class_names))
            console.print(f"outputs in [bold]{result.run_dir}[/bold]")


def _reporter(quiet: bool, start: float) -> Any:
    """Phases on the console (unless --quiet); notes such as a checkpoint fallback always."""
    from flexsample.workflows.progress import Reporter

    from .console import ConsoleReporter

    if not quiet:
        return ConsoleReporter(console, start)

    class Notes(Reporter):
        @contextlib.contextmanager
        def phase(self, name: str) -> Iterator[None]:
            raise_pending_interrupt()
            yield

        def message(self, text: str) -> None:
            err_console.print(text, highlight=False, soft_wrap=True, markup=False)

    return Notes()


_sig = inspect.signature(run)
run.__signature__ = _sig.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    + _config_options()
)
app.command()(run)


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder written by `flexsample run`"),
    device: str = typer.Option(None, help="override the run's device"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Re-evaluate a run's best.pt on its validation and test splits."""
    with user_errors(debug):
        from flexsample._optional import check_torch_pair

        check_torch_pair()
        from flexsample.workflows.run import read_run_config, reevaluate

        from .console import metrics_table

        res = reevaluate(run_dir, device)
        names = (
            json.loads((run_dir / "results.json").read_text())["class_names"]
            if (run_dir / "results.json").exists()
            else [str(i) for i in range(len(res["test"]["per_class_recall"]))]
        )
        table = metrics_table({"val": res["val"], "test": res["test"]}, names)
        table.title = f"{run_dir} (best.pt, dataset {read_run_config(run_dir).dataset})"
        console.print(table)


@app.command("list")
def list_cmd(
    name: str = typer.Argument(
        None,
        help="a component (mcdropout) or a kind (estimator, policy, ...): show its options",
        show_default=False,
    ),
    plugin: list[str] = typer.Option(None, help="module to import first (repeatable)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Every registered estimator, policy, allocation, anchor strategy, dataset, loss and
    sampler, then the fixed choices of --acquisition, --mc-source and --decouple. With NAME:
    the options of that component (or of every component of that kind), each with its type,
    default, accepted values and help; set them with their flag or --<kind>-opt KEY=VALUE."""
    with user_errors(debug):
        from . import catalogue

        fresh = bool(plugin) or catalogue.needs_registries()
        if fresh:
            from flexsample.engine.registry import import_plugin

            for module in plugin or []:
                import_plugin(module)
            regs = catalogue.registries()
            rows = [(reg.kind, n, doc, origin) for reg in regs for n, doc, origin in reg.describe()]
            options = catalogue.option_rows(regs)
        else:  # only built-ins: their names without importing them (and torch)
            rows = [(kind, n, doc, catalogue.__name__) for kind, n, doc in catalogue.BUILTINS]
            options = list(catalogue.OPTIONS)
        if name is not None:
            _print_options(name, rows, options)
            return
        rows += [(kind, n, doc, catalogue.__name__) for kind, n, doc in catalogue.CHOICES]
        width = max(len(r[1]) for r in rows)
        kind_width = max(len(r[0]) for r in rows)
        for kind, n, doc, origin in rows:
            builtin = origin.startswith("flexsample.")
            source = "" if builtin else f"  [plugin: {origin}]"
            console.print(
                f"{kind:<{kind_width}} {n:<{width}}  {doc}{source}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )


def _print_options(
    name: str, rows: list[tuple[str, str, str, str]], options: list[tuple[str, ...]]
) -> None:
    """The options of component `name` (or of each component of kind `name`)."""
    from flexsample.engine.options import closest

    chosen = [r for r in rows if r[1] == name or r[0] == name]
    if not chosen:
        every = sorted({r[1] for r in rows} | {r[0] for r in rows})
        raise FlexsampleError(
            f"no component or kind named '{name}'{closest(name, every)}; see `flexsample list`"
        )
    for kind, n, doc, _ in chosen:
        mine = [o for o in options if o[0] == kind and o[1] == n]
        console.print(f"{kind} {n}: {doc}", soft_wrap=True, highlight=False, markup=False)
        if not mine:
            console.print("  no options", highlight=False, markup=False)
        for _, _, option, type_, default, accepted, help_ in mine:
            flag = _option_flag(kind, option)
            text = f"  {option} ({type_}, default {default}): {help_}"
            if accepted:
                text += f"; accepted: {accepted}"
            console.print(f"{text}  [{flag}]", soft_wrap=True, highlight=False, markup=False)


def _option_flag(kind: str, option: str) -> str:
    """Where `flexsample list` says an option is set."""
    if kind == "launcher":
        from .bench import LAUNCHER_FLAGS

        return LAUNCHER_FLAGS.get(option, f"flexsample.bench(launcher_options={{'{option}': ...}})")
    if kind == "tracker":
        return f"from Python: build_trackers(..., options={{NAME: {{'{option}': ...}}}})"
    return f"--{kind}-opt {option}=..."


def _register_optional_commands() -> None:
    """Commands that live in their own modules (added by later issues)."""
    from .splits_cmd import splits

    app.command("splits")(splits)
    from .bench import bench

    app.command(
        "bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(bench)


_register_optional_commands()


def main() -> None:
    """The console script: SIGTERM handled like Ctrl-C (exit 143), errors as one line."""
    install_signal_handlers()
    app(prog_name="flexsample")


if __name__ == "__main__":
    sys.exit(main())
