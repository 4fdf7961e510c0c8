"""`flexsample bench`: parse the grid, run it through `workflows.bench`, print the summary."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import typer

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.bench import (
    BASELINES,
    finished,
    plan_cells,
    run_grid,
    unkeyed_runs,
    write_summary,
)
from flexsample.workflows.config import RunConfig


def split_list(value: str | None, flag: str, cast: type = str) -> list[Any] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise FlexsampleError(f"{flag} is empty; give a comma-separated list")
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise FlexsampleError(
            f"{flag} '{value}' must be a comma-separated list of {cast.__name__} values"
        ) from None


def bench(
    ctx: typer.Context,
    estimators: str = typer.Option(None, help="comma-separated estimators to sweep"),
    policies: str = typer.Option(None, help="comma-separated policies (schedules) to sweep"),
    datasets: str = typer.Option(None, help="comma-separated datasets to sweep"),
    imbalance_ratios: str = typer.Option(None, help="comma-separated imbalance ratios"),
    seeds: str = typer.Option(None, help="comma-separated training seeds [default: 0]"),
    baselines: str = typer.Option(
        None, help=f"comma-separated baseline recipes: {', '.join(BASELINES)}"
    ),
    out: Path = typer.Option(Path("bench"), help="folder for the cells and the summary"),
    jobs: int = typer.Option(1, min=1, help="cells run in parallel (CPU processes)"),
    config: Path = typer.Option(None, help="base run config (TOML, YAML or JSON)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Benchmark a grid of estimators x policies x datasets x ratios x seeds and baselines.

    Any other `flexsample run` flag (e.g. --rounds 4 --allocation difficulty) applies to every
    cell. Each cell is keyed on a hash of its resolved configuration and the flexsample
    version, kept in its folder name (seed0-<hash>) and its cell.json: a finished cell is
    reused only when that hash matches, so an interrupted bench resumes where it stopped, while
    the same grid with other flags (say --rounds 2 after --rounds 5) runs into new folders and
    never reports the old cells as the new ones. A cell counts as finished only once cell.json
    says so (written last): a killed or failed cell is rerun.

    Writes bench.csv, summary.md and summary.png under --out. They cover every finished cell
    under --out, this grid's and those earlier grids left there (in_grid = no, marked with †):
    bench.csv has one row per cell with its config_hash and, as columns, the flags that differ
    between cells of one method; the summary groups by method plus those flags. Ctrl-C stops
    the grid (running cells are rerun next time, finished ones are kept), exit code 130;
    with --jobs N the worker processes also stop when the bench process dies.
    """
    from .app import console, err_console, user_errors

    with user_errors(debug):
        import sys

        from flexsample.workflows.config import resolve_config
        from flexsample.workflows.run import build_components, load_plugins

        from .console import progress_bars

        flags = _passthrough_flags(ctx)
        base = resolve_config(config, flags)
        cells = plan_cells(
            base,
            out,
            split_list(estimators, "--estimators"),
            split_list(policies, "--policies"),
            split_list(datasets, "--datasets"),
            split_list(imbalance_ratios, "--imbalance-ratios", float),
            split_list(seeds, "--seeds", int),
            split_list(baselines, "--baselines"),
        )
        load_plugins(base.plugin)
        for cell in cells:  # every name checked before the first cell runs
            build_components(cell.config)
        out.mkdir(parents=True, exist_ok=True)
        todo = [c for c in cells if finished(c) is None]
        console.print(
            f"{len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run "
            f"({jobs} job{'s' if jobs > 1 else ''})"
        )
        try:
            progress = progress_bars(console, "cell {task.completed}/{task.total}")
            with progress:
                task = progress.add_task("bench", total=len(todo), info="")
                run_grid(
                    todo,
                    jobs,
                    on_start=lambda c: progress.update(
                        task, info=f"{c.method} seed {c.config.seed}"
                    ),
                    on_done=lambda c: progress.update(
                        task, advance=1, info=f"done {c.method} seed {c.config.seed}"
                    ),
                )
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            from flexsample.cli import interrupt_exit_code, interrupt_name

            what = interrupt_name(exc)
            done = sum(finished(c) is not None for c in cells)
            err_console.print(
                f"[bold red]{what}:[/bold red] {done} of {len(cells)} cells finished and kept "
                f"in {out}; rerun the same command to run the rest",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(interrupt_exit_code(exc)) from None
        except BrokenProcessPool:
            err_console.print(
                "[bold red]error:[/bold red] a bench worker process died (killed by a signal "
                "or the out-of-memory killer); finished cells are kept, the interrupted ones "
                "will rerun: rerun the same command, with fewer --jobs if memory ran out",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        info = write_summary(out, cells, "flexsample " + " ".join(sys.argv[1:]))
        from rich.markdown import Markdown

        console.print(Markdown((out / "summary.md").read_text()))
        if info.other_cells:
            console.print(
                f"{info.other_cells} finished cell(s) of other configurations under {out} are "
                "listed too (in_grid = no, † in summary.md)"
            )
        stale = unkeyed_runs(out)
        if stale:
            console.print(
                f"{len(stale)} run folder(s) under {out} have no finished cell.json (an older "
                f"flexsample or a cell that did not finish, e.g. {stale[0]}): not reported"
            )
        console.print(f"bench outputs in [bold]{out}[/bold]: bench.csv, summary.md, summary.png")


def _passthrough_flags(ctx: typer.Context) -> dict[str, Any]:
    """Parse the extra arguments with `flexsample run`'s own option parser."""
    if not ctx.args:
        return {}
    from typer.main import get_command

    from .app import app

    run_cmd = get_command(app).commands["run"]  # type: ignore[attr-defined]
    try:
        sub = run_cmd.make_context("flexsample bench", list(ctx.args), parent=ctx)
    except Exception as exc:
        raise FlexsampleError(f"bench: {exc}") from None
    params = {k: v for k, v in sub.params.items() if k in RunConfig.model_fields}
    for flag in ("out", "resume", "overwrite", "print_config"):
        if sub.params.get(flag):
            raise FlexsampleError(
                f"bench sets each cell's run folder itself; drop --{flag.replace('_', '-')}"
            )
    return params
