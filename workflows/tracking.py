"""Experiment trackers as a run and a bench reach them: through the TRACKERS registry only.

The trackers themselves (TensorBoard, MLflow, W&B, CSV) live in `flexsample.integrations`,
a layer above this one, and register there; an installed package adds its own through the
`flexsample.trackers` entry-point group. Checking `--log-to` and building the callbacks goes
through the registry, so `workflows` never imports `integrations`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.registry import TRACKERS


def check_trackers(names: Sequence[str] | str | None) -> list[str]:
    """`--log-to` as registered tracker names (`TRACKERS`: the built-ins and those installed
    packages add), matched case-insensitively, duplicates dropped; None, "" or "none": no
    tracker. An unknown name is one line listing the accepted ones; a package a tracker needs
    (its `requires`, or its own `check_installed`, reached through the registry) that is not
    installed is one line saying what to install: both before any work starts."""
    given = names.split(",") if isinstance(names, str) else list(names or [])
    accepted = TRACKERS.names()
    lower = {n.lower(): n for n in accepted}
    out: list[str] = []
    for raw in given:
        text = str(raw).strip()
        if not text or (text.lower() == "none" and len(given) == 1):
            continue
        name = text if text in TRACKERS else lower.get(text.lower())
        if name is None:
            raise FlexsampleError(
                f"unknown tracker '{text}' in --log-to; accepted: {', '.join(accepted)} "
                "(any subset, comma-separated, e.g. --log-to tensorboard,csv)"
            )
        name = TRACKERS.resolve(name)
        if name not in out:
            out.append(name)
    for name in out:
        factory = TRACKERS.get(name)
        check = getattr(factory, "check_installed", None)
        if callable(check):
            check()
        else:
            _require_packages(name, getattr(factory, "requires", ()))
    return out


def _require_packages(name: str, modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            top = module.split(".")[0]
            raise FlexsampleError(
                f"--log-to {name} needs the package '{top}', which is not installed; install "
                f"it with: pip install {top}"
            ) from None


def build_trackers(
    names: Sequence[str],
    *,
    run_dir: Path,
    log_dir: Path | None = None,
    config: dict[str, Any],
    run_name: str,
    group: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Any]:
    """One tracker callback per name (checked with `check_trackers`), each built through the
    registry, `TRACKERS.build(name, options, **runtime)`, with the run-time arguments every
    tracker takes: `run_dir` (the run folder), `log_dir` (logs go to `log_dir/[group/]run_name`
    instead), `config`, `run_name` and `group` (a bench's name: MLflow experiment, W&B group).
    `options`: tracker name -> its options (e.g. `{"mlflow": {"experiment": "ablations"}}`).

    Each tracker's destination (its logs folder, its server) is checked here, before the run
    builds its dataset and model, through the tracker's own `check_destination()` where it has
    one: a folder that cannot be written or a server that does not answer within a few seconds
    is one line naming the tracker and the destination."""
    chosen = dict(options or {})
    unused = [n for n in chosen if n not in names]
    if unused:
        raise FlexsampleError(
            f"options given for tracker '{unused[0]}', which is not among the trackers of "
            f"this run ({', '.join(names) or 'none'})"
        )
    runtime = {
        "run_dir": Path(run_dir),
        "log_dir": None if log_dir is None else Path(log_dir),
        "config": dict(config),
        "run_name": run_name,
        "group": group,
    }
    built = [TRACKERS.build(name, chosen.get(name, {}), **runtime) for name in names]
    for tracker in built:
        check = getattr(tracker, "check_destination", None)
        if callable(check):
            check()
    return built
