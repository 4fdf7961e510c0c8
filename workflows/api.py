"""flexsample from Python (notebooks, scripts): `run` and `bench`, validated like the CLI.

Both go through the pipelines the command line uses (`workflows.run.execute`,
`workflows.bench.run_bench`) after the same checks, so a bad value raises a
`FlexsampleError` carrying the line `flexsample run` / `flexsample bench` would print.
They print nothing unless asked (`progress=True`); notes such as a checkpoint fallback on
resume are kept in `RunResult.notes` and sent to the `flexsample` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexsample._optional import check_torch_pair
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.loop import Callback

from .config import Layer, RunConfig, build_config, explain_config, read_config_file
from .progress import Reporter

if TYPE_CHECKING:
    from flexsample.engine.interfaces import ValRecord
    from flexsample.engine.loop import StepRecord

    from .bench import BenchResult, GridProgress

log = logging.getLogger("flexsample")

ConfigLike = RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None


@dataclass
class RunResult:
    """A finished run: its folder, config, results.json and rounds.jsonl, as Python objects.

    `already_finished`: `resume=True` found the run complete and changed nothing (the
    results are the saved ones).
    """

    run_dir: Path
    config: RunConfig
    results: dict[str, Any]
    rounds: list[dict[str, Any]]
    already_finished: bool = False
    notes: list[str] = field(default_factory=list)
    outcome: Any = None  # the pipeline's RunOutcome (step records, class names)
    main_rank: bool = True  # False on the other ranks of a torchrun run (they write nothing)

    @property
    def test(self) -> dict[str, Any]:
        """Test metrics of the best-validation checkpoint (results.json's `test`)."""
        return self.results["test"]

    @property
    def test_last(self) -> dict[str, Any]:
        """Test metrics of the last weights (results.json's `test_last`)."""
        return self.results["test_last"]

    @property
    def class_names(self) -> list[str]:
        return list(self.results.get("class_names", []))


def config_layers(config: ConfigLike) -> list[Layer]:
    """The layer `config` adds over the defaults: a RunConfig, a dict or a config file."""
    if config is None:
        return []
    if isinstance(config, RunConfig):
        return [("the config", config.model_dump())]
    if isinstance(config, Mapping):
        return [("the config dict", config)]
    if isinstance(config, str | os.PathLike):
        return [(f"config file {config}", read_config_file(config))]
    raise FlexsampleError(
        f"config must be a RunConfig, a dict or the path of a TOML, YAML or JSON file, "
        f"not {type(config).__name__}"
    )


def given(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that say something: None, [] and {} mean "not given" (as an absent flag)."""
    return {k: v for k, v in overrides.items() if v is not None and v != [] and v != {}}


def resolve(config: ConfigLike, overrides: Mapping[str, Any]) -> RunConfig:
    """defaults < `config` (a RunConfig, a dict or a TOML/YAML/JSON file) < `overrides`.

    Keys may be spelled with '-' or '_'; an option may be given by its shortcut (`knn=5`) or
    in its section (`estimator_options={"knn": 5}`). A bad value is the CLI's one line: it
    names the key as its flag and where it came from (an override counts as "the command
    line").
    """
    return build_config([*config_layers(config), ("the command line", given(overrides))])


def explain(config: ConfigLike, overrides: Mapping[str, Any]) -> tuple[RunConfig, list[str]]:
    """`resolve`, and the keys whose values came from the recipe (what --print-config shows)."""
    return explain_config([*config_layers(config), ("the command line", given(overrides))])


@dataclass
class Hooks:
    """What a front end adds to a run: its progress display and its reporter (the CLI's rich
    bars and phases; plain lines or nothing from Python). `callbacks` gets the resolved
    config (for the epoch budget) and is called on the main rank only."""

    callbacks: Callable[[RunConfig], Sequence[Callback]] = lambda cfg: ()
    reporter: Reporter | None = None


def run(
    config: ConfigLike = None,
    /,
    *,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    log_to: Sequence[str] | str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    hooks: Hooks | None = None,
    **overrides: Any,
) -> RunResult:
    """Train one configuration into a run folder, like `flexsample run`, and return its results.

    `flexsample run` itself calls this function: every rule applies to both.
    `config`: a `RunConfig`, a dict or a config file; `overrides` use RunConfig's field names
    and the option shortcuts (`run(rounds=4, estimator="entropy", knn=5)`), or a component's
    options in its section (`estimator_options={"power": 2}`). `out` defaults to the CLI's
    `runs/<timestamp>-<estimator>-<policy>`. `resume=True` continues the run in `out` from its
    last checkpoint (values given must repeat the saved ones, `device` excepted).
    `callbacks`: engine `Callback`s, told of every query, epoch and step. `log_to`: experiment
    trackers as for `--log-to` ("tensorboard,csv" or a list), logging into `log_dir` if given.
    Under torchrun every rank calls `run()` alike: the work is sharded and rank 0 writes `out`.
    """
    out = _out_path(out)
    if resume and overwrite:
        raise FlexsampleError(
            "--resume continues the run in --out and --overwrite replaces it; pass one"
        )
    if resume:
        if out is None:
            raise FlexsampleError("--resume needs --out RUN_DIR (the run to continue)")
        from .resume import resume_config

        target = Path(out)
        layers = [*config_layers(config), ("the command line", given(overrides))]
        cfg = resume_config(target, layers)
    else:
        cfg = resolve(config, overrides)  # names, options and ranges: before torch is imported
    # tracker names and packages, once the run's --plugin modules (which may add one) loaded
    trackers = _tracker_names(log_to)
    if log_dir is not None and not trackers:
        raise FlexsampleError("--log-dir is for --log-to tensorboard, csv or wandb; add one")
    check_torch_pair()  # a torchvision of another build: one line with the fix, not nms's
    from .distributed import finish
    from .run import default_out, execute, join_distributed
    from .setup import build_components

    if not resume:
        target = Path(out) if out is not None else default_out(cfg)
        build_components(cfg)  # bad names fail before the folder is touched
    # under torchrun every rank calls run(): one process group, rank 0's folder
    dist, target = join_distributed(cfg, target, resume=resume, overwrite=overwrite)
    main_rank = dist is None or dist.ranks.is_main
    progress = progress and main_rank
    notes: list[str] = []
    if hooks is not None:
        reporter = hooks.reporter if main_rank and hooks.reporter is not None else Reporter()
        shown = list(hooks.callbacks(cfg)) if main_rank else []
    else:
        reporter = _PlainReporter(notes) if progress else _QuietReporter(notes)
        shown = [_PlainProgress(cfg.rounds * cfg.epochs_per_round)] if progress else []
    logs: list[Callback] = []
    if trackers and main_rank:
        from .tracking import build_trackers

        logs = list(
            build_trackers(
                trackers,
                run_dir=target,
                log_dir=Path(log_dir) if log_dir is not None else None,
                config=cfg.model_dump(),
                run_name=target.resolve().name,
            )
        )
    outcome = execute(
        cfg,
        target,
        resume=resume,
        overwrite=overwrite,
        callbacks=[*shown, *callbacks, *logs],
        reporter=reporter,
        dist=dist,
    )
    finish(dist)
    if progress and outcome.already_finished:
        print(f"run {target} is already finished (results.json); nothing changed", flush=True)
    return RunResult(
        run_dir=target,
        config=cfg,
        results=outcome.results,
        rounds=read_rounds(target),
        already_finished=outcome.already_finished,
        notes=notes,
        outcome=outcome,
        main_rank=main_rank,
    )


def _out_path(out: Any, flag: str = "--out") -> Path | None:
    """`out` as a path, `~` expanded like --data-dir; anything that is not a path (out=5) or
    that the file system cannot hold (a name too long) is one FlexsampleError line."""
    if out is None:
        return None
    if not isinstance(out, str | os.PathLike):
        raise FlexsampleError(
            f"{flag} must be a folder path (a str or os.PathLike), not {type(out).__name__}"
        )
    path = Path(out).expanduser()
    if not str(path).strip():
        raise FlexsampleError(f"{flag} is empty; give a folder path")
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    long = [part for part in path.parts if len(os.fsencode(part)) > limit]
    if long:
        raise FlexsampleError(
            f"{flag} {str(path)[:80]}...: the name '{long[0][:40]}...' is longer than the file "
            f"system allows ({limit} bytes); choose a shorter one"
        )
    return path


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """rounds.jsonl of a run folder: one dict per query step."""
    path = Path(run_dir) / "rounds.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def bench(
    config: ConfigLike = None,
    /,
    *,
    out: str | os.PathLike[str] = "bench",
    estimators: Sequence[str] | str | None = None,
    policies: Sequence[str] | str | None = None,
    datasets: Sequence[str] | str | None = None,
    imbalance_ratios: Sequence[float] | float | None = None,
    seeds: Sequence[int] | int | None = None,
    baselines: Sequence[str] | str | None = None,
    budgets: Sequence[str] | str | None = None,
    launcher: str = "local",
    jobs: int | None = None,
    cells_per_gpu: int | None = None,
    cpus_per_cell: int | None = None,
    retries: int = 1,
    launcher_options: dict[str, Any] | None = None,
    on_progress: Callable[[GridProgress], None] | None = None,
    on_plan: Callable[..., None] | None = None,
    recipes: Sequence[str] | str | None = None,
    progress: bool = False,
    log_to: Sequence[str] | str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    command: str = "flexsample.bench()",
    **overrides: Any,
) -> BenchResult:
    """Run a benchmark grid, like `flexsample bench`, and return its `BenchResult`.

    `config` and `overrides` make the base config every cell starts from (as for `run`); the
    grid axes are lists (`estimators=["bald", "entropy"], seeds=[0, 1]`; a single value
    counts as a list of one). Finished cells under `out` with the same config are reused.
    Failed cells do not raise: they are in `result.failed` (and bench.csv).
    """
    from .bench import run_bench

    out = _out_path(out) or Path("bench")
    base = resolve(config, overrides)
    recipe_bases = {
        name: resolve(config, {**overrides, "recipe": name}) for name in _as_list(recipes) or []
    }
    shown = _print_grid if progress else None
    callbacks = [f for f in (shown, on_progress) if f is not None]

    def report(p: GridProgress) -> None:
        for f in callbacks:
            f(p)

    return run_bench(
        base,
        Path(out),
        estimators=_as_list(estimators),
        policies=_as_list(policies),
        datasets=_as_list(datasets),
        imbalance_ratios=_as_list(imbalance_ratios),
        seeds=_as_list(seeds),
        baselines=_as_list(baselines),
        budgets=_as_list(budgets),
        launcher=launcher,
        jobs=jobs,
        cells_per_gpu=cells_per_gpu,
        cpus_per_cell=cpus_per_cell,
        retries=retries,
        launcher_options=launcher_options,
        on_progress=report,
        on_plan=on_plan or (lambda cells, todo, launcher: None),
        recipe_bases=recipe_bases,
        command=command,
        log_to=_tracker_names(log_to),
        log_dir=Path(log_dir) if log_dir is not None else None,
    )


def _tracker_names(log_to: Sequence[str] | str | None) -> list[str]:
    from .tracking import check_trackers

    return check_trackers(log_to)


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | int | float):
        return [value]
    return list(value)


def _print_grid(p: GridProgress) -> None:
    if p.event in ("done", "failed", "retry"):
        label = p.cell.label if p.cell is not None else ""
        tail = f": {p.error}" if p.error else ""
        print(f"cell {label} {p.event}{tail} ({p.done}/{p.total} done)", flush=True)


class _QuietReporter(Reporter):
    """Prints nothing; notes are kept (and logged) for the caller."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes

    def message(self, text: str) -> None:
        self.notes.append(text)
        log.info(text)


class _PlainReporter(_QuietReporter):
    """Phases and notes as plain lines (a notebook cell's output, a job log)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f"{name} ...", flush=True)
        yield
        print(f"{name} done in {time.perf_counter() - start:.1f} s", flush=True)

    def message(self, text: str) -> None:
        super().message(text)
        print(text, flush=True)


class _PlainProgress(Callback):
    """One line per epoch and per query step (an engine callback)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def on_epoch_end(self, epoch: int, loss: float, val: ValRecord, improved: bool) -> None:
        mark = " (best)" if improved else ""
        print(
            f"epoch {epoch + 1}/{self.budget}: loss {loss:.4f}, val balanced accuracy "
            f"{val.balanced_accuracy:.4f}{mark}",
            flush=True,
        )

    def on_step_end(self, record: StepRecord) -> None:
        print(
            f"step {record.step}: {record.subset_size} samples, {record.epochs} epochs, "
            f"scoring {record.score_s:.1f} s",
            flush=True,
        )
