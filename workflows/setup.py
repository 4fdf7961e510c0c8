"""A run's set-up: everything built before training, and the curriculum loop around it.

Plugins, components (built first, so bad names fail fast), device, dataset, model (with its
optional SSL initialisation), the trainer/pool/curriculum and the anchor set at step 0. Split
out of `run.py` so the pipeline there reads as execution only; `run.py`, `documents.py`,
`resume.py` and `decouple.py` all build on these pieces, and this module imports none of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexsample.datasets.base import LTDataset, build_dataset
from flexsample.engine.distributed import Ranks
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Allocation, Anchors, Estimator, Policy
from flexsample.engine.loop import Callback, Curriculum
from flexsample.engine.pool import Pool
from flexsample.engine.registry import get_allocation, get_anchors, get_policy, import_plugin
from flexsample.engine.scoring import check_acquisition
from flexsample.engine.validation import plugin_call, select_anchors
from flexsample.training.data import SplitLoader
from flexsample.training.losses import LOSSES
from flexsample.training.models import SMALL_CNN, create_model
from flexsample.training.samplers import SAMPLERS
from flexsample.training.trainer import TrainConfig, Trainer

from . import outputs as out_files
from .config import RunConfig
from .distributed import DistributedRun
from .progress import Reporter

TINY_IMAGE = 32  # images at most this size default to the small CNN


@dataclass
class Components:
    estimator: Estimator
    schedule: Policy
    allocation: Allocation
    anchors: Anchors


def load_plugins(modules: list[str]) -> None:
    for m in modules:
        import_plugin(m)


def build_components(cfg: RunConfig) -> Components:
    """Every named component, built before any data is touched, so bad names fail fast."""
    from flexsample.engine.combine import build_estimator

    comps = Components(
        estimator=build_estimator(cfg.estimator, cfg.estimator_options),
        schedule=get_policy(cfg.policy, **cfg.policy_options),
        allocation=get_allocation(cfg.allocation, **cfg.allocation_options),
        anchors=get_anchors(cfg.anchors, **cfg.anchors_options),
    )
    LOSSES.get(cfg.loss)
    SAMPLERS.get(cfg.sampler)
    check_acquisition(cfg.acquisition, comps.estimator)
    plugin_call("policy", comps.schedule, "validate", cfg.rounds, cfg.epochs_per_round)
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


def load_dataset(cfg: RunConfig, reporter: Reporter | None = None) -> LTDataset:
    return build_dataset(
        cfg.dataset, cfg.dataset_options, cache_dir=cfg.cache_dir, progress=reporter
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


@dataclass
class Setup:
    """Everything a run builds before training: components, device, data and model."""

    comps: Components
    device: torch.device
    ds: LTDataset
    model: torch.nn.Module
    pretrain_s: float = 0.0  # wall time of SSL pre-training (or its cache read) in this process
    ranks: Ranks = field(default_factory=Ranks.local)  # torchrun's process group, or alone


def set_up(
    cfg: RunConfig,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    dist: DistributedRun | None = None,
) -> Setup:
    """Plugins, components, device, dataset and model (SSL-initialised for a fresh ssl run).

    Under torchrun (`dist`) the device is the rank's own and SSL pre-training runs DDP."""
    from flexsample.datasets.images import tune_allocator

    tune_allocator()  # big decoded batches reuse freed memory instead of page-faulting anew
    load_plugins(cfg.plugin)
    comps = build_components(cfg)
    device = resolve_device(cfg.device) if dist is None else dist.device
    ranks = dist.ranks if dist is not None else Ranks.local()
    ds = load_dataset(cfg, reporter)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, ds)
    pretrain_s = 0.0
    if cfg.init == "ssl" and not resume:
        from flexsample.training.ssl import init_from_ssl

        t0 = time.perf_counter()
        init_from_ssl(
            model,
            ds,
            lambda: make_model(cfg, ds),
            **_ssl_options(cfg, ds, device, reporter, ranks),
            pretrained=cfg.pretrained,
        )
        pretrain_s = time.perf_counter() - t0
    return Setup(comps, device, ds, model, pretrain_s, ranks)


def build_loop(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    callbacks: Sequence[Callback],
    meta: dict[str, Any] | None = None,
) -> tuple[Curriculum, out_files.RunRecorder]:
    """The trainer, the pool and the curriculum around them, checkpointing into `out`.

    Under torchrun only rank 0 checkpoints and records (the recorder is None elsewhere)."""
    ds, device, ranks = setup.ds, setup.device, setup.ranks
    trainer = Trainer(
        setup.model,
        ds.train,
        ds.val,
        ds.num_classes,
        TrainConfig(
            epochs_per_round=cfg.epochs_per_round,
            epoch_budget=cfg.rounds * cfg.epochs_per_round,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            loss=cfg.loss,
            loss_params=dict(cfg.loss_options),
            sampler=cfg.sampler,
            mixup=cfg.mixup,
            logit_adjust=cfg.logit_adjust,
            seed=cfg.seed,
            num_workers=cfg.workers,
            samples_per_epoch=len(ds.train.labels) if cfg.budget == "samples" else None,
            restart=cfg.restart,
            lr_subset_scale=cfg.lr_subset_scale,
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            cosine=cfg.cosine,
        ),
        device,
        ranks=ranks,
        sync_bn=cfg.sync_bn,
    )
    pool = Pool(ds.train.labels, ds.num_classes)
    recorder = out_files.RunRecorder(out, pool, ds.train.ids) if ranks.is_main else None
    loop = Curriculum(
        pool,
        setup.comps.schedule,
        setup.comps.allocation,
        setup.comps.estimator,
        trainer,
        SplitLoader(ds.train, False, device, cfg.workers).inputs,
        rounds=cfg.rounds,
        epochs_per_round=cfg.epochs_per_round,
        seed=cfg.seed,
        score_batch_size=cfg.score_batch_size,
        acquisition=cfg.acquisition,
        acquisition_beta=cfg.acquisition_beta,
        checkpoint_dir=out if ranks.is_main else None,
        callbacks=[recorder, *callbacks] if recorder is not None else list(callbacks),
        meta=meta,
        mc_source=cfg.mc_source,
        snapshots=cfg.snapshots,
        ranks=ranks,
        checkpoint_on=cfg.checkpoint_on,
    )
    return loop, recorder


def start_from_anchors(
    cfg: RunConfig, setup: Setup, loop: Curriculum, reporter: Reporter | None = None
) -> None:
    """Choose the anchor set and put it in the pool as step 0."""
    ds = setup.ds
    t0 = time.perf_counter()
    features = _anchor_features(cfg, ds, setup.comps.anchors, setup.device, reporter, setup.ranks)
    if _uses_ssl_anchors(cfg, setup):
        setup.pretrain_s += time.perf_counter() - t0
    comps = setup.comps
    anchors = select_anchors(comps.anchors, ds.train.labels, ds.num_classes, cfg.seed, features)
    loop.start(anchors)


def _uses_ssl_anchors(cfg: RunConfig, setup: Setup) -> bool:
    """Whether the anchor strategy takes its features from SSL pre-training."""
    if not getattr(setup.comps.anchors, "needs_features", False):
        return False
    from flexsample.training.anchor_features import resolve_feature_source

    source = resolve_feature_source(
        cfg.option("anchors", "anchor_features", "auto"), setup.ds.image_size, cfg.pretrained
    )
    return source == "ssl"


def _anchor_features(
    cfg: RunConfig,
    ds: LTDataset,
    anchors: Anchors,
    device: torch.device,
    reporter: Reporter | None = None,
    ranks: Ranks | None = None,
) -> np.ndarray | None:
    if not getattr(anchors, "needs_features", False):
        return None
    from flexsample.training.anchor_features import anchor_features

    return anchor_features(
        cfg.option("anchors", "anchor_features", "auto"),
        ds,
        lambda: make_model(cfg, ds),
        **_ssl_options(cfg, ds, device, reporter, ranks),
        pretrained=cfg.pretrained,
        batch_size=cfg.score_batch_size,
    )


def _ssl_options(
    cfg: RunConfig,
    ds: LTDataset,
    device: torch.device,
    reporter: Reporter | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    return {
        "ranks": ranks,
        "progress": reporter,
        "image_size": ds.image_size,
        "seed": cfg.seed,
        "cache_dir": cfg.cache_dir,
        "ssl_epochs": cfg.ssl_epochs,
        "device": device,
        "backbone": resolved_backbone(cfg, ds),
        "ssl_method": cfg.ssl_method,
        "ssl_batch_size": cfg.ssl_batch_size,
        "num_workers": cfg.workers,
    }
