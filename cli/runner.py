"""Wiring of one run: config -> dataset -> pool -> anchors -> curriculum -> test -> report."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from flexsample._version import __version__
from flexsample.datasets.base import LTDataset, build_dataset
from flexsample.engine.checkpoint import load_checkpoint, prev_path
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Allocation, Anchors, Estimator, Schedule, ValRecord
from flexsample.engine.loop import Curriculum, StepRecord
from flexsample.engine.pool import Pool
from flexsample.engine.registries import get_allocation, get_anchors, get_policy
from flexsample.engine.registry import import_plugin
from flexsample.training.data import SplitLoader
from flexsample.training.evaluate import evaluate
from flexsample.training.losses import LOSSES
from flexsample.training.models import SMALL_CNN, create_model
from flexsample.training.samplers import SAMPLERS
from flexsample.training.trainer import TrainConfig, Trainer

from . import outputs as out_files
from .config import RunConfig
from .console import ProgressDisplay, metrics_table, rounds_table
from .plots import plot_curves

TINY_IMAGE = 32  # images at most this size default to the small CNN


@dataclass
class Components:
    estimator: Estimator
    schedule: Schedule
    allocation: Allocation
    anchors: Anchors


def load_plugins(modules: list[str]) -> None:
    for m in modules:
        import_plugin(m)


def build_components(cfg: RunConfig) -> Components:
    """Every named component, built before any data is touched, so bad names fail fast."""
    from flexsample.estimators import build_estimator

    options = cfg.model_dump()
    comps = Components(
        estimator=build_estimator(cfg.estimator, **options),
        schedule=get_policy(cfg.policy, **options),
        allocation=get_allocation(cfg.allocation, **options),
        anchors=get_anchors(cfg.anchors, **options),
    )
    LOSSES.get(cfg.loss)
    SAMPLERS.get(cfg.sampler)
    comps.schedule.validate(cfg.rounds, cfg.epochs_per_round)
    return comps


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FlexsampleError(
            f"unknown --device '{name}'; accepted: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlexsampleError(f"--device {name}: CUDA is not available here; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlexsampleError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type != "cpu":
        raise FlexsampleError(f"unsupported --device '{name}'; accepted: auto, cpu, cuda, cuda:N")
    return dev


def load_dataset(cfg: RunConfig) -> LTDataset:
    return build_dataset(
        cfg.dataset,
        imbalance_ratio=cfg.imbalance_ratio,
        data_seed=cfg.data_seed,
        data_dir=cfg.data_dir,
        splits_dir=cfg.splits_dir,
        image_size=cfg.image_size,
        skip_missing=cfg.skip_missing,
        cache_dir=cfg.cache_dir,
        profile=cfg.profile,
        num_classes=cfg.num_classes,
    )


def resolved_backbone(cfg: RunConfig, ds: LTDataset) -> str:
    if cfg.backbone != "auto":
        return cfg.backbone
    return SMALL_CNN if ds.image_size <= TINY_IMAGE else "resnet18"


def make_model(cfg: RunConfig, ds: LTDataset, pretrained: bool = True) -> torch.nn.Module:
    """The classifier; `pretrained=False` skips the weights file (about to load a checkpoint)."""
    weights = cfg.pretrained if pretrained else None
    return create_model(
        resolved_backbone(cfg, ds), ds.num_classes, ds.in_chans, cfg.dropout, weights
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "flexsample": __version__}
    for pkg in ("torch", "torchvision", "timm", "numpy", "faiss-cpu", "scikit-learn", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_out(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.estimator}-{cfg.policy}"


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FlexsampleError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FlexsampleError(
                f"run folder {out} already exists; pass --overwrite to replace it, --resume to "
                "continue it, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


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


def execute(
    cfg: RunConfig,
    out: Path,
    console: Console,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one configuration into `out` (already prepared) and return results.json's content."""
    t_start = time.perf_counter()
    from flexsample.datasets.images import tune_allocator

    tune_allocator()  # big decoded batches reuse freed memory instead of page-faulting anew
    load_plugins(cfg.plugin)
    comps = build_components(cfg)
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, ds)
    if cfg.init == "ssl" and not resume:
        from flexsample.training.ssl import init_from_ssl

        init_from_ssl(
            model,
            ds,
            lambda: make_model(cfg, ds),
            **_ssl_options(cfg, ds, device),
            pretrained=cfg.pretrained,
        )

    config_doc = {
        "config": cfg.model_dump(),
        "flexsample_version": __version__,
        "versions": versions(),
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed},
        "split_hash": ds.split_hash(),
        "dataset_info": ds.info,
        "command": sys.argv,
    }
    if not resume:
        out_files.write_json(out / out_files.CONFIG, config_doc)

    epoch_budget = cfg.rounds * cfg.epochs_per_round
    trainer = Trainer(
        model,
        ds.train,
        ds.val,
        ds.num_classes,
        TrainConfig(
            epochs_per_round=cfg.epochs_per_round,
            epoch_budget=epoch_budget,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            loss=cfg.loss,
            loss_params=cfg.model_dump(),
            sampler=cfg.sampler,
            mixup=cfg.mixup,
            logit_adjust=cfg.logit_adjust,
            seed=cfg.seed,
            num_workers=cfg.workers,
        ),
        device,
    )
    pool = Pool(ds.train.labels, ds.num_classes)
    recorder = out_files.RunRecorder(out, pool, ds.train.ids)
    display = ProgressDisplay(console, epoch_budget) if not quiet else None
    callbacks = [recorder] + ([display] if display else [])
    loop = Curriculum(
        pool,
        comps.schedule,
        comps.allocation,
        comps.estimator,
        trainer,
        SplitLoader(ds.train, False, device, cfg.workers).inputs,
        rounds=cfg.rounds,
        epochs_per_round=cfg.epochs_per_round,
        seed=cfg.seed,
        score_batch_size=cfg.score_batch_size,
        checkpoint_dir=out,
        callbacks=callbacks,
    )
    if resume:
        _restore(loop, out)
        recorder.restore(loop.records)
    else:
        features = _anchor_features(cfg, ds, comps.anchors, device)
        anchors = comps.anchors.select(ds.train.labels, ds.num_classes, cfg.seed, features)
        loop.start(anchors)
        recorder.write_selection()
        recorder.write_scores()

    if display is not None:
        with display:
            result = loop.run()
    else:
        result = loop.run()

    t_eval = time.perf_counter()
    groups = ds.group_of_labels()
    last = evaluate(
        model,
        ds.test,
        device,
        groups,
        pool.subset_counts(),
        cfg.logit_adjust,
        cfg.score_batch_size,
        cfg.workers,
    )
    best = load_checkpoint(out / out_files.BEST)
    model.load_state_dict(best["model"])
    test = evaluate(
        model,
        ds.test,
        device,
        groups,
        best["subset_counts"],
        cfg.logit_adjust,
        cfg.score_batch_size,
        cfg.workers,
    )
    eval_s = time.perf_counter() - t_eval

    records = [r.to_json() for r in result.records]
    results = {
        "class_names": ds.class_names,
        "test": test,
        "test_last": last,
        "best_val_balanced_accuracy": result.best_val_balanced_accuracy,
        "best_epoch": result.best_epoch,
        "subset_size_at_best": result.subset_size_at_best,
        "final_subset_size": pool.size,
        "train_size": len(ds.train),
        "groups": groups,
        "skipped_missing": int(ds.info.get("skipped_missing", 0)),
        "timings": {
            "total_s": time.perf_counter() - t_start,
            "train_s": sum(r["train_s"] for r in records),
            "score_s": sum(r["score_s"] for r in records),
            "eval_s": eval_s,
        },
    }
    out_files.write_json(out / out_files.RESULTS, results)
    plot_curves(
        out / out_files.CURVES,
        records,
        val_curve(loop.history, result.records),
        ds.class_names,
        f"{ds.name}  estimator={cfg.estimator}  policy={cfg.policy}  seed={cfg.seed}",
    )
    if not quiet:
        console.print(rounds_table(result.records, ds.class_names))
        console.print(
            metrics_table({"best-val checkpoint": test, "last weights": last}, ds.class_names)
        )
        console.print(f"outputs in [bold]{out}[/bold]")
    return results


def _anchor_features(
    cfg: RunConfig, ds: LTDataset, anchors: Anchors, device: torch.device
) -> np.ndarray | None:
    if not getattr(anchors, "needs_features", False):
        return None
    from flexsample.training.anchor_features import anchor_features

    return anchor_features(
        cfg.anchor_features,
        ds,
        lambda: make_model(cfg, ds),
        **_ssl_options(cfg, ds, device),
        pretrained=cfg.pretrained,
    )


def _ssl_options(cfg: RunConfig, ds: LTDataset, device: torch.device) -> dict[str, Any]:
    return {
        "image_size": ds.image_size,
        "seed": cfg.seed,
        "cache_dir": cfg.cache_dir,
        "ssl_epochs": cfg.ssl_epochs,
        "device": device,
        "backbone": resolved_backbone(cfg, ds),
        "batch_size": cfg.score_batch_size,
        "num_workers": cfg.workers,
    }


def _restore(loop: Curriculum, out: Path) -> None:
    path = out / out_files.CHECKPOINT
    try:
        state = load_checkpoint(path)
    except FlexsampleError:
        state = load_checkpoint(prev_path(path))
    loop.load_state_dict(state)


def read_run_config(run_dir: Path) -> RunConfig:
    from .config import resolve_config

    path = run_dir / out_files.CONFIG
    if not path.is_file():
        raise FlexsampleError(f"{run_dir} is not a run folder (no {out_files.CONFIG})")
    return resolve_config(path, {})


def reevaluate(run_dir: Path, device_name: str | None) -> dict[str, Any]:
    """`flexsample eval`: the run's best.pt on its val and test splits."""
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
    return res
