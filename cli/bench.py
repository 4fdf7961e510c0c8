"""`flexsample bench`: parse the grid, run it through `workflows.bench`, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.bench import BASELINES


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


LAUNCH = "Launching"

# the bench flags that set a launcher's options (the others: flexsample.bench's
# launcher_options)
LAUNCHER_FLAGS = {
    "jobs": "flexsample bench --jobs",
    "cells_per_gpu": "flexsample bench --cells-per-gpu",
    "cpus_per_cell": "flexsample bench --cpus-per-cell",
    "gpus_per_cell": "flexsample bench --gpus-per-cell",
    "address": "flexsample bench --address",
    "partition": "flexsample bench --partition",
    "time": "flexsample bench --time",
    "array_parallelism": "flexsample bench --slurm-array-parallelism",
    "extra": "flexsample bench --slurm-extra KEY=VALUE",
    "wait": "flexsample bench --wait/--no-wait",
}


def bench(
    ctx: typer.Context,
    estimators: str = typer.Option(None, help="comma-separated estimators to sweep"),
    policies: str = typer.Option(None, help="comma-separated policies (schedules) to sweep"),
    datasets: str = typer.Option(None, help="comma-separated datasets to sweep"),
    imbalance_ratios: str = typer.Option(None, help="comma-separated imbalance ratios"),
    seeds: str = typer.Option(None, help="comma-separated training seeds [default: 0]"),
    budgets: str = typer.Option(
        None,
        help="comma-separated training budgets to sweep, epochs and/or samples (see run "
        "--budget); summary.md gets a table per budget [default: --budget's]",
    ),
    baselines: str = typer.Option(None, help=f"comma-separated baselines: {', '.join(BASELINES)}"),
    recipes: str = typer.Option(
        None,
        help="comma-separated recipes, each a method of its own (e.g. paper,paper-control: "
        "`flexsample list recipe`); the other run flags override each recipe's values",
    ),
    out: Path = typer.Option(
        Path("bench"),
        help="folder for the cells and the summary; with ray or slurm it must be on a "
        "filesystem every worker sees (checked: a cell that cannot see it fails saying so)",
    ),
    config: Path = typer.Option(None, help="base run config (TOML, YAML or JSON)"),
    launcher: str = typer.Option(
        "local",
        help="where cells run: local (this machine), ray (a Ray cluster, or a local Ray "
        "runtime when none is running), slurm (one submitit job array), or a launcher an "
        "installed package adds (entry-point group flexsample.launchers); each launcher "
        "takes only its own flags below",
        rich_help_panel=LAUNCH,
    ),
    jobs: int = typer.Option(
        None,
        help="local: cells at once; with G GPUs each cell gets its own GPU (jobs <= G x "
        "--cells-per-gpu), and the cores are split between the cells [default: 1]",
        rich_help_panel=LAUNCH,
    ),
    cells_per_gpu: int = typer.Option(
        None, help="local: cells sharing one GPU [default: 1]", rich_help_panel=LAUNCH
    ),
    cpus_per_cell: int = typer.Option(
        None,
        help="threads (CPU cores) per cell [default: local: cores / jobs; ray, slurm: 1]; "
        "CPU results depend on it, so keep it fixed to compare launchers",
        rich_help_panel=LAUNCH,
    ),
    gpus_per_cell: float = typer.Option(
        None,
        help="ray: GPUs per cell, a fraction such as 0.5 shares one, 0 (default) = the cell "
        "sees no GPU; slurm: whole GPUs per cell",
        rich_help_panel=LAUNCH,
    ),
    retries: int = typer.Option(
        1,
        help="times a failed cell is retried before it counts as failed",
        rich_help_panel=LAUNCH,
    ),
    address: str = typer.Option(
        None,
        help="ray: the cluster, auto or ray://HOST:PORT [default: RAY_ADDRESS, else a new "
        "local runtime]",
        rich_help_panel=LAUNCH,
    ),
    partition: str = typer.Option(None, help="slurm: the partition", rich_help_panel=LAUNCH),
    time_limit: str = typer.Option(
        None,
        "--time",
        help="slurm (required there): time limit per cell, HH:MM:SS or D-HH:MM:SS",
        rich_help_panel=LAUNCH,
    ),
    slurm_array_parallelism: int = typer.Option(
        None, help="slurm: at most this many array tasks at once", rich_help_panel=LAUNCH
    ),
    slurm_extra: list[str] = typer.Option(
        None,
        help="slurm: extra sbatch parameter KEY=VALUE (repeatable)",
        rich_help_panel=LAUNCH,
    ),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="slurm: wait for the array; --no-wait returns after submitting, and the same "
        "command later collects and summarises",
        rich_help_panel=LAUNCH,
    ),
    log_to: str = typer.Option(
        None,
        help="experiment trackers for every cell: tensorboard, mlflow, wandb, csv (any subset, "
        "comma-separated); cells are grouped by the --out folder's name (MLflow experiment, "
        "W&B group, a sub-folder of --log-dir)",
    ),
    log_dir: Path = typer.Option(
        None, help="TensorBoard / CSV logs [default: inside each cell's folder]"
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Benchmark a grid of estimators x policies x datasets x ratios x budgets x seeds and baselines.

    Any other `flexsample run` flag (e.g. --rounds 4 --allocation difficulty) applies to every cell. Each cell is keyed on a hash of its resolved configuration and the flexsample version, kept in its folder name (seed0-<hash>) and its cell.json: a finished cell is reused only when that hash matches, so an interrupted bench resumes where it stopped, while the same grid with other flags runs into new folders and never reports the old cells as the new ones.

    Cells run on this machine (--launcher local, --jobs N: one GPU per cell when there are GPUs), on a Ray cluster (--launcher ray) or as a Slurm job array (--launcher slurm); the same grid gives the same results whatever the launcher at the same --cpus-per-cell. A failed cell is recorded (bench.csv status failed, with its error), retried up to --retries times, and the rest of the grid goes on; the exit code is then 1 (2 when every failure was bad input, such as a plugin that raised).

    Writes bench.csv, summary.md and summary.png under --out, over every finished cell there (this grid's and earlier grids', marked in_grid = no and †). Ctrl-C cancels the running cells (rerun next time; finished ones are kept), exit code 130.
    """  # noqa: E501 (typer keeps line breaks: one line per paragraph)
    from .app import console, err_console, user_errors

    with user_errors(debug):
        import sys

        from flexsample.workflows import api

        # the launcher's own options, as given (each launcher refuses those it does not
        # declare: workflows.bench.make_launcher)
        given = {
            "address": address,
            "partition": partition,
            "time": time_limit,
            "array_parallelism": slurm_array_parallelism,
            "extra": parse_key_values(slurm_extra, "--slurm-extra") if slurm_extra else None,
            "wait": None if wait else False,
            "gpus_per_cell": gpus_per_cell,
        }
        options = {k: v for k, v in given.items() if v is not None}
        flags = _passthrough_flags(ctx)
        bars = _GridBars(console)
        planned: list[Any] = []

        def on_plan(cells: list[Any], todo: list[Any], lau: Any) -> None:
            planned.extend(cells)
            n = jobs or 1
            where = f"{n} job{'s' if n > 1 else ''}" if lau.name == "local" else lau.name
            console.print(
                f"{len(cells)} cells, {len(cells) - len(todo)} already finished, "
                f"{len(todo)} to run ({where})"
            )
            note = getattr(lau, "note", "")
            if note:
                console.print(note, highlight=False, markup=False)
            bars.start(len(todo))

        try:
            with bars:
                result = api.bench(
                    config,
                    out=out,
                    recipes=split_list(recipes, "--recipes"),
                    estimators=split_list(estimators, "--estimators"),
                    policies=split_list(policies, "--policies"),
                    datasets=split_list(datasets, "--datasets"),
                    imbalance_ratios=split_list(imbalance_ratios, "--imbalance-ratios", float),
                    seeds=split_list(seeds, "--seeds", int),
                    budgets=split_list(budgets, "--budgets"),
                    baselines=split_list(baselines, "--baselines"),
                    launcher=launcher,
                    jobs=jobs,
                    cells_per_gpu=cells_per_gpu,
                    cpus_per_cell=cpus_per_cell,
                    retries=retries,
                    launcher_options=options,
                    on_progress=bars.update,
                    on_plan=on_plan,
                    command="flexsample " + " ".join(sys.argv[1:]),
                    log_to=_trackers(log_to),
                    log_dir=log_dir,
                    **flags,
                )
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            from flexsample.cli import (
                interrupt_exit_code,
                interrupt_handled,
                interrupt_name,
                mark_interrupt_reported,
            )
            from flexsample.workflows.bench import finished

            interrupt_handled()
            what = interrupt_name(exc)
            done = sum(finished(c) is not None for c in planned)
            err_console.print(
                f"[bold red]{what}:[/bold red] running cells cancelled; {done} of "
                f"{len(planned)} cells finished and kept in {out}; rerun the same command to "
                "run the rest",
                highlight=False,
                soft_wrap=True,
            )
            mark_interrupt_reported()
            raise typer.Exit(interrupt_exit_code(exc)) from None
        _print_outcome(console, err_console, result)


def _print_outcome(console: Any, err_console: Any, result: Any) -> None:
    from rich.markdown import Markdown

    from flexsample.workflows.bench import unkeyed_runs

    out, info, report = result.out, result.summary, result.report
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
    if report.pending:
        console.print(
            f"{len(report.pending)} cells submitted and not finished yet (--no-wait); rerun "
            "the same command to wait for them and summarise",
            highlight=False,
        )
    if report.failed:
        cell, outcome = report.failed[0]
        more = len(report.failed) - 1
        others = f" (and {more} more)" if more else ""
        err_console.print(
            f"[bold red]error:[/bold red] {len(report.failed)} of {len(result.cells)} cells "
            f"failed after every retry: cell {cell.label}: {outcome.error}{others}; bench.csv "
            "has each error (status failed) and each cell's cell.json its traceback; rerun "
            "the same command to retry them",
            highlight=False,
            soft_wrap=True,
        )
        user = all(o.user_error for _, o in report.failed)
        raise typer.Exit(2 if user else 1)


def _trackers(text: str | None) -> list[str]:
    if text is None:
        return []
    from flexsample.integrations.trackers import parse_log_to

    return parse_log_to(text)


def parse_key_values(items: list[str], flag: str) -> dict[str, str]:
    """['mem=32G', 'qos=high'] -> {'mem': '32G', 'qos': 'high'}; a malformed item is one line."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FlexsampleError(f"{flag} '{item}' must be KEY=VALUE, e.g. {flag} mem=32G")
        pairs[key.strip()] = value.strip()
    return pairs


class _GridBars:
    """The bench's progress: cells done of the grid, running, failed and retried, with ETA."""

    def __init__(self, console: Any) -> None:
        from .console import progress_bars

        self.progress = progress_bars(console, "cells {task.completed}/{task.total}")
        self.task: Any = None

    def __enter__(self) -> _GridBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("bench", total=total, info="")

    def update(self, p: Any) -> None:
        if self.task is None:
            return
        cell = p.cell
        what = f"{p.event} {cell.method} seed {cell.config.seed}" if cell is not None else p.event
        info = f"running {p.running} · failed {p.failed} · retried {p.retries} · {what}"
        self.progress.update(self.task, completed=p.done + p.failed, info=info)


def _passthrough_flags(ctx: typer.Context) -> dict[str, Any]:
    """Parse the extra arguments with `flexsample run`'s own option parser."""
    if not ctx.args:
        return {}
    from typer.main import get_command

    from .app import app, option_flags

    run_cmd = get_command(app).commands["run"]  # type: ignore[attr-defined]
    try:
        sub = run_cmd.make_context("flexsample bench", list(ctx.args), parent=ctx)
    except Exception as exc:
        raise FlexsampleError(f"bench: {exc}") from None
    for flag in ("out", "resume", "overwrite", "print_config"):
        if sub.params.get(flag):
            raise FlexsampleError(
                f"bench sets each cell's run folder itself; drop --{flag.replace('_', '-')}"
            )
    own = (
        "out",
        "config",
        "resume",
        "overwrite",
        "print_config",
        "quiet",
        "debug",
        "log_to",
        "log_dir",
    )
    return option_flags({k: v for k, v in sub.params.items() if k not in own})
