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

from pydantic import ValidationError

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.loop import Callback

from .config import RunConfig, describe_error, read_config_file, validate_config
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


def resolve(config: ConfigLike, overrides: Mapping[str, Any]) -> RunConfig:
    """defaults < `config` (a RunConfig, a dict or a TOML/YAML/JSON file) < `overrides`.

    Keys may be spelled with '-' or '_'. A bad value is the CLI's one line: it names the
    key as its flag and where it came from (an override counts as "the command line").
    """
    source = "the command line"
    if config is None:
        values: dict[str, Any] = {}
    elif isinstance(config, RunConfig):
        values = config.model_dump()
    elif isinstance(config, Mapping):
        values = _keys(config)
        source = "the config dict"
        validate_config(values, source)
    elif isinstance(config, str | os.PathLike):
        values = read_config_file(config)
        source = f"config file {config}"
        validate_config(values, source)
    else:
        raise FlexsampleError(
            f"config must be a RunConfig, a dict or the path of a TOML, YAML or JSON file, "
            f"not {type(config).__name__}"
        )
    given = _keys(overrides)
    values.update(given)
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        where = "the command line" if loc and str(loc[0]) in given else source
        raise FlexsampleError(describe_error(exc, where)) from None


def _keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in values.items()}


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
    **overrides: Any,
) -> RunResult:
    """Train one configuration into a run folder, like `flexsample run`, and return its results.

    `config`: a `RunConfig`, a dict or a config file; `overrides` use RunConfig's field names
    (`run(rounds=4, estimator="entropy")`). `out` defaults to the CLI's
    `runs/<timestamp>-<estimator>-<policy>`. `resume=True` continues the run in `out` from its
    last checkpoint (values given must repeat the saved ones, `device` excepted).
    `callbacks`: engine `Callback`s, told of every query, epoch and step. `log_to`: experiment
    trackers as for `--log-to` ("tensorboard,csv" or a list), logging into `log_dir` if given.
    Under torchrun every rank calls `run()` alike: the work is sharded and rank 0 writes `out`.
    """
    from .distributed import finish
    from .run import build_components, default_out, execute, join_launch, load_plugins

    trackers = _tracker_names(log_to)  # names and packages checked before anything else

    if resume and overwrite:
        raise FlexsampleError(
            "--resume continues the run in --out and --overwrite replaces it; pass one"
        )
    if resume:
        if out is None:
            raise FlexsampleError("--resume needs --out RUN_DIR (the run to continue)")
        target = Path(out)
        cfg = _resume_config(target, config, overrides)
    else:
        cfg = resolve(config, overrides)
        target = Path(out) if out is not None else default_out(cfg)
        load_plugins(cfg.plugin)
        build_components(cfg)  # bad names fail before the folder is touched
    # under torchrun every rank calls run(): one process group, rank 0's folder
    launch, target = join_launch(cfg, target, resume=resume, overwrite=overwrite)
    main_rank = launch is None or launch.ranks.is_main
    progress = progress and main_rank
    notes: list[str] = []
    reporter = _PlainReporter(notes) if progress else _QuietReporter(notes)
    shown = [_PlainProgress(cfg.rounds * cfg.epochs_per_round)] if progress else []
    logs: list[Callback] = []
    if trackers and main_rank:
        from flexsample.integrations.trackers import make_trackers

        logs = list(
            make_trackers(
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
        launch=launch,
    )
    finish(launch)
    if progress and outcome.already_finished:
        print(f"run {target} is already finished (results.json); nothing changed", flush=True)
    return RunResult(
        run_dir=target,
        config=cfg,
        results=outcome.results,
        rounds=read_rounds(target),
        already_finished=outcome.already_finished,
        notes=notes,
    )


def _resume_config(out: Path, config: ConfigLike, overrides: Mapping[str, Any]) -> RunConfig:
    """The saved config of `out`; values given (a file, a dict, a RunConfig, overrides) must
    repeat it, as with `flexsample run --resume`."""
    from .run import resume_config

    flags: dict[str, Any] = {}
    file = None
    if isinstance(config, RunConfig):
        flags.update(config.model_dump())
    elif isinstance(config, Mapping):
        flags.update(_keys(config))
    elif isinstance(config, str | os.PathLike):
        file = Path(config)
    elif config is not None:
        resolve(config, {})  # the one-line type error
    flags.update(_keys(overrides))
    return resume_config(out, file, flags)


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
    jobs: int = 1,
    cells_per_gpu: int = 1,
    cpus_per_cell: int | None = None,
    retries: int = 1,
    launcher_options: dict[str, Any] | None = None,
    on_progress: Callable[[GridProgress], None] | None = None,
    progress: bool = False,
    log_to: Sequence[str] | str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> BenchResult:
    """Run a benchmark grid, like `flexsample bench`, and return its `BenchResult`.

    `config` and `overrides` make the base config every cell starts from (as for `run`); the
    grid axes are lists (`estimators=["bald", "entropy"], seeds=[0, 1]`; a single value
    counts as a list of one). Finished cells under `out` with the same config are reused.
    Failed cells do not raise: they are in `result.failed` (and bench.csv).
    """
    from .bench import run_bench

    base = resolve(config, overrides)
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
        command="flexsample.bench()",
        log_to=_tracker_names(log_to),
        log_dir=Path(log_dir) if log_dir is not None else None,
    )


def _tracker_names(log_to: Sequence[str] | str | None) -> list[str]:
    if not log_to:
        return []
    from flexsample.integrations.trackers import parse_log_to

    return parse_log_to(log_to if isinstance(log_to, str) else ",".join(log_to))


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
