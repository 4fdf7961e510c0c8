"""The `flexsample` command: run, eval, list (and the commands of later modules)."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from rich.console import Console

from flexsample._version import __version__
from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.config import RunConfig

app = typer.Typer(
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
    """Bad input -> one line on stderr and exit code 2; bugs -> exit 1; --debug shows traces."""
    try:
        yield
    except typer.Exit:
        raise
    except (FlexsampleError, KeyboardInterrupt) as exc:
        if debug:
            traceback.print_exc()
        msg = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        err_console.print(f"[bold red]error:[/bold red] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


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


def _config_options() -> list[inspect.Parameter]:
    """One --flag per RunConfig field, so the CLI, config files and docs never drift apart."""
    params = []
    for name, field in RunConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        panel = (field.json_schema_extra or {}).get("panel")
        default = field.default if field.default_factory is None else []
        shown = "none" if default is None else default
        text = f"{field.description} \\[default: {shown}]"
        ann = field.annotation
        if name == "plugin":
            typ: Any = list[str]
        elif ann is bool:
            typ, flag = bool, f"{flag}/--no-{flag[2:]}"
        elif get_origin(ann) is Literal:
            typ = str
        else:
            args = [a for a in get_args(ann) if a is not type(None)]
            typ = args[0] if args else ann
        option = typer.Option(None, flag, help=text, rich_help_panel=panel, show_default=False)
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typ | None
            )
        )
    return params


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
    **flags: Any,
) -> None:
    """Train with Flexible Sampling and write a run folder.

    With no arguments: the embedded digits-lt (r = 100), prototype anchors, MC-dropout BALD, a linear schedule with difficulty-aware allocation, on the best device found.

    Writes config.json, rounds.jsonl, selection.npz, scores.npz, results.json, curves.png, checkpoint.pt and best.pt into the run folder. Flags override values of --config.
    """  # noqa: E501 (typer keeps line breaks: one line per paragraph)
    with user_errors(debug):
        from flexsample.workflows.config import resolve_config
        from flexsample.workflows.run import (
            build_components,
            default_out,
            execute,
            load_plugins,
            prepare_out,
            read_run_config,
        )

        from .console import ProgressDisplay, metrics_table, rounds_table

        if resume:
            if out is None:
                raise FlexsampleError("--resume needs --out RUN_DIR (the run to continue)")
            given = [k for k, v in flags.items() if v not in (None, []) and k != "device"]
            if given or config is not None:
                raise FlexsampleError(
                    "--resume continues a run with its own config; drop "
                    + ", ".join("--" + k.replace("_", "-") for k in given or ["config"])
                )
            cfg = read_run_config(out)
            if flags.get("device") is not None:
                cfg.device = flags["device"]
            if not (out / "checkpoint.pt").exists():
                raise FlexsampleError(f"{out} has no checkpoint.pt to resume from")
        else:
            cfg = resolve_config(config, flags)
        if print_config:
            typer.echo(json.dumps(cfg.model_dump(), indent=2))
            raise typer.Exit()
        target = out if out is not None else default_out(cfg)
        if not resume:
            load_plugins(cfg.plugin)
            build_components(cfg)  # bad names fail before the folder is touched
            prepare_out(target, overwrite)
        display = [] if quiet else [ProgressDisplay(console, cfg.rounds * cfg.epochs_per_round)]
        outcome = execute(cfg, target, resume=resume, callbacks=display)
        if not quiet:
            res = outcome.results
            console.print(rounds_table(outcome.records, outcome.class_names))
            console.print(
                metrics_table(
                    {"best-val checkpoint": res["test"], "last weights": res["test_last"]},
                    outcome.class_names,
                )
            )
            console.print(f"outputs in [bold]{target}[/bold]")


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
    plugin: list[str] = typer.Option(None, help="module to import first (repeatable)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Every registered estimator, policy, allocation, anchor strategy, dataset, loss, sampler."""
    with user_errors(debug):
        from flexsample.datasets.base import DATASETS
        from flexsample.engine.registries import ALLOCATIONS, ANCHORS, ESTIMATORS, POLICIES
        from flexsample.training.losses import LOSSES
        from flexsample.training.samplers import SAMPLERS
        from flexsample.workflows.run import load_plugins

        load_plugins(plugin or [])
        rows = [
            (reg.kind, name, doc, origin)
            for reg in (ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS, DATASETS, LOSSES, SAMPLERS)
            for name, doc, origin in reg.describe()
        ]
        width = max(len(r[1]) for r in rows)
        for kind, name, doc, origin in rows:
            builtin = origin.startswith("flexsample.")
            source = "" if builtin else f"  [plugin: {origin}]"
            console.print(
                f"{kind:<10} {name:<{width}}  {doc}{source}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )


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
    app(prog_name="flexsample")


if __name__ == "__main__":
    sys.exit(main())
