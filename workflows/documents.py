"""What a run writes about itself: config.json, results.json (and its `compute` part), plots.

Pure functions of the run's config, its `Setup` and the loop's result: the resolved values
and library versions of config.json, the metrics, timings and compute cost of results.json,
the validation curve and the pictures. Split out of `run.py` so the documents can be read
(and changed) apart from the execution that produces their inputs; it builds on `setup.py`
only.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from flexsample._version import __version__
from flexsample.engine.interfaces import ValRecord
from flexsample.engine.loop import Curriculum, LoopResult, StepRecord
from flexsample.engine.pool import Pool

from . import outputs as out_files
from .config import RunConfig
from .plots import calibration_subject, plot_curves, plot_reliability
from .setup import Setup, _uses_ssl_anchors, resolved_backbone


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "flexsample": __version__}
    for pkg in ("torch", "torchvision", "timm", "numpy", "faiss-cpu", "scikit-learn", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def config_document(cfg: RunConfig, setup: Setup, run_id: str = "") -> dict[str, Any]:
    """config.json: the config as asked, plus what it resolved to on this machine."""
    device = setup.device
    device_name = str(device) + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    )
    return {
        "config": cfg.model_dump(),
        "resolved": resolved_values(cfg, setup),
        "run_id": run_id,
        "flexsample_version": __version__,
        "versions": versions(),
        "device": device_name,
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed},
        "split_hash": setup.ds.split_hash(),
        "dataset_info": setup.ds.info,
        "command": sys.argv,
    }


def resolved_values(cfg: RunConfig, setup: Setup) -> dict[str, Any]:
    """What 'auto' and unset options became here: backbone, image size, device, workers.

    `workers` / `eval_workers`: the worker processes the training / evaluation DataLoaders
    use (0 for splits held in memory, which are sliced without a DataLoader).
    """
    from flexsample.datasets.images import dataloader_options

    ds, device = setup.ds, setup.device

    def workers(train: bool) -> int:
        split = ds.train if train else ds.test
        if getattr(split, "in_memory", None) is not None:
            return 0
        cached = getattr(split, "cache", None) is not None
        return int(dataloader_options(device, cfg.workers, train, cached)["num_workers"])

    return {
        "backbone": resolved_backbone(cfg, ds),
        "image_size": int(ds.image_size),
        "device": str(device),
        "workers": workers(True),
        "eval_workers": workers(False),
    }


def results_document(
    setup: Setup, result: LoopResult, pool: Pool, test: dict[str, Any], last: dict[str, Any]
) -> dict[str, Any]:
    """results.json (the caller fills in total and evaluation time)."""
    ds = setup.ds
    records = [r.to_json() for r in result.records]
    return {
        "class_names": ds.class_names,
        "test": test,
        "test_last": last,
        "best_val_balanced_accuracy": result.best_val_balanced_accuracy,
        "best_epoch": result.best_epoch,
        "subset_size_at_best": result.subset_size_at_best,
        "final_subset_size": pool.size,
        "train_size": len(ds.train),
        "groups": ds.group_of_labels(),
        "skipped_missing": int(ds.info.get("skipped_missing", 0)),
        "timings": {
            "total_s": 0.0,
            "train_s": sum(r["train_s"] for r in records),
            "score_s": sum(r["score_s"] for r in records),
            "eval_s": 0.0,
        },
    }


def pretrain_samples(cfg: RunConfig, setup: Setup) -> int:
    """Views forwarded by the SSL pre-training the run's weights or anchors come from
    (`training.ssl.ssl_samples`: 2 views x images x --ssl-epochs), 0 without one.

    Counted once, as the method's cost: `--init ssl` and ssl anchor features share one
    pre-training, and weights read from the cache count as if trained here.
    """
    if cfg.init != "ssl" and not _uses_ssl_anchors(cfg, setup):
        return 0
    from flexsample.training.ssl import default_ssl_batch_size, ssl_samples

    size = int(setup.ds.image_size)
    batch = cfg.ssl_batch_size or default_ssl_batch_size(setup.device, size, cfg.ssl_method)
    return ssl_samples(len(setup.ds.train), cfg.ssl_epochs, batch)


def compute_document(
    cfg: RunConfig,
    setup: Setup,
    result: LoopResult,
    pretrain_s: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """results.json `compute`: what the run cost, in samples processed and seconds per phase.

    `train_samples`: the samples the learner trained on, summed over epochs (what it reports
    per epoch; one pass over the subset with `--budget epochs`, as many as the full training
    set with `--budget samples`; mixup counts each image once).
    `score_samples`: images the scoring contexts pushed through the backbone (one per
    candidate for features, probabilities and head-mode MC dropout; T per candidate for
    full-mode MC; 0 for estimators that read nothing, e.g. `random`; passes an estimator makes
    outside its context are not seen). `pretrain_samples`: see `pretrain_samples`.
    Seconds: `train_s`/`score_s` sum the steps' records, `pretrain_s` is the SSL pre-training
    (or cached-weights read, plus the ssl anchor-feature pass), `eval_s` the test evaluation.
    """
    return {
        "train_samples": int(
            sum(r.train_samples or r.subset_size * r.epochs for r in result.records)
        ),
        "score_samples": int(sum(r.score_samples for r in result.records)),
        "pretrain_samples": pretrain_samples(cfg, setup),
        "train_s": float(timings["train_s"]),
        "score_s": float(timings["score_s"]),
        "pretrain_s": float(pretrain_s),
        "eval_s": float(timings["eval_s"]),
        "total_s": float(timings["total_s"]),
    }


def val_curve(history: list[ValRecord], records: list[StepRecord]) -> list[tuple[int, int, float]]:
    """(epoch, subset size, val balanced accuracy) for every trained epoch."""
    curve = []
    for v in history:
        size = next(
            (r.subset_size for r in records if r.epoch <= v.epoch < r.epoch + r.epochs), None
        )
        if size is not None:
            curve.append((v.epoch, size, v.balanced_accuracy))
    return curve


def write_reports(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    loop: Curriculum,
    result: LoopResult,
    results: dict[str, Any],
) -> None:
    """results.json, curves.png and calibration.png (the test split, best-val checkpoint)."""
    ds = setup.ds
    out_files.write_json(out / out_files.RESULTS, results)
    title = f"{ds.name}  estimator={cfg.estimator}  policy={cfg.policy}  seed={cfg.seed}"
    plot_curves(
        out / out_files.CURVES,
        [r.to_json() for r in result.records],
        val_curve(loop.history, result.records),
        ds.class_names,
        title,
    )
    test = results["test"]
    plot_reliability(
        out / out_files.CALIBRATION,
        test["calibration"],
        test["ece"],
        f"{title}\n{calibration_subject(cfg.decouple)}",
    )
