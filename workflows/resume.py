"""A saved run folder read back: its config for `--resume`, its best.pt for `flexsample eval`.

`read_run_config` and `resume_config` give the configuration a run was made with (refusing
flags that differ from it); `reevaluate` rebuilds the run's dataset and model and evaluates
the best-validation checkpoint again. Continuing the training itself stays with the execution
in `run.py`. Split out of `run.py`; builds on `setup.py` only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexsample.engine.checkpoint import load_checkpoint
from flexsample.engine.errors import FlexsampleError
from flexsample.training.evaluate import evaluate

from . import outputs as out_files
from . import rundir
from .config import Layer, RunConfig
from .plots import calibration_subject, plot_reliability
from .setup import load_dataset, load_plugins, make_model, resolve_device


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a run folder was made with (one-line errors for a missing folder or file)."""
    from .config import resolve_config

    rundir.read_config_document(run_dir)
    return resolve_config(run_dir / out_files.CONFIG, {})


def resume_config(out: Path, layers: Sequence[Layer]) -> RunConfig:
    """The saved config of the run in `out`, for `--resume` with the values given again.

    Values (flags, a --config file, a dict) that repeat the saved ones are accepted, so the
    original command with `--resume` appended continues the run; any that differ are refused,
    listed as `--flag: saved -> given`. `--device` may change (a run may continue on another
    machine).
    """
    from .components import SHORTCUTS
    from .config import build_config, normal_keys

    saved = read_run_config(out)
    given: set[tuple[str, ...]] = set()
    device = None
    for _, values in layers:
        for key, value in normal_keys(values).items():
            if key == "device":
                device = value
            elif key in SHORTCUTS:
                given.add((f"{SHORTCUTS[key]}_options", key))
            elif key.endswith("_options") and isinstance(value, dict):
                given |= {(key, k) for k in value}
            else:
                given.add((key,))
    if given:
        asked = build_config(layers).model_dump()
        have = saved.model_dump()
        diff = rundir.flag_differences(
            {p[-1]: _at(have, p) for p in given}, {p[-1]: _at(asked, p) for p in given}
        )
        if diff:
            raise FlexsampleError(
                f"--resume continues a run with its own config; these flags differ from the "
                f"saved config of {out} (flag: saved -> given): {'; '.join(diff)}; drop them to "
                "continue the run, or start a new run with another --out"
            )
    if device is not None:
        saved.device = device
    return saved


def _at(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None  # type: ignore[assignment]
    return values


def reevaluate(run_dir: Path, device_name: str | None) -> dict[str, Any]:
    """`flexsample eval`: the run's best.pt on its val and test splits; (re)writes the run's
    calibration.png from the test split where the folder is writable."""
    cfg = read_run_config(run_dir)
    if not (run_dir / out_files.BEST).is_file():
        raise FlexsampleError(f"{run_dir} has no {out_files.BEST} (did the run finish an epoch?)")
    load_plugins(cfg.plugin)
    device = resolve_device(device_name or cfg.device)
    ds = load_dataset(cfg)
    saved = json.loads((run_dir / out_files.CONFIG).read_text())
    if saved.get("split_hash") not in (None, ds.split_hash()):
        raise FlexsampleError(
            f"the dataset's splits differ from those of run {run_dir} (split hash "
            f"{ds.split_hash()} != {saved['split_hash']})"
        )
    model = make_model(cfg, ds, pretrained=False).to(device)
    best = load_checkpoint(run_dir / out_files.BEST)
    model.load_state_dict(best["model"])
    groups = ds.group_of_labels()
    res = {
        name: evaluate(
            model,
            split,
            device,
            groups,
            best["subset_counts"],
            cfg.logit_adjust,
            cfg.score_batch_size,
            cfg.workers,
        )
        for name, split in (("val", ds.val), ("test", ds.test))
    }
    # the picture a finished run has (older runs lack it); a read-only run folder (a shared
    # drive) still gets its metrics, without the picture: res then has no "calibration_png"
    with contextlib.suppress(OSError):
        plot_reliability(
            run_dir / out_files.CALIBRATION,
            res["test"]["calibration"],
            res["test"]["ece"],
            f"{ds.name}  {calibration_subject(cfg.decouple, 'flexsample eval')}",
        )
        res["calibration_png"] = str(run_dir / out_files.CALIBRATION)
    return res
