"""The decoupling stage of a run (`--decouple crt|lws|tau-norm`, Kang et al. 2020).

After the curriculum has finished and its best-validation weights were evaluated (stage 1),
the backbone is frozen and only the linear head is re-balanced on the FULL training split (the
decoupling recipe uses all data, whatever subset the curriculum reached). The stage-2 model is
then evaluated on validation and test.

Weights: best.pt is rewritten with the stage-2 head (same keys, same model), so
`flexsample eval` on the run folder reproduces the top-level test metrics of results.json, and
the run folder holds no file a plain run lacks. The stage-1 head and subset counts are kept
inside best.pt (`decouple.stage1_head`, `decouple.stage1_subset_counts`): the backbone is
shared, so that is all stage 1 needs. `restore_stage1` puts them back before a resumed run
re-evaluates stage 1, so a run killed between writing best.pt and results.json redoes stage 2
from the same stage-1 model (stage 2 is seeded: it gives the same head again).

Resume: a finished run (results.json written) is left untouched by `--resume`; an unfinished
one continues its curriculum and then runs stage 2. `--decouple` cannot be added to a finished
run by `--resume` (a flag that differs from the saved config is refused): start a new run.

results.json: the top-level `test` is the stage-2 model's; `best_val_balanced_accuracy`,
`best_epoch` and `test_last` stay those of the curriculum (stage 1). The `decouple` object holds
`method`, `epochs` (crt: `--decouple-epochs`; lws: the authors' `dc.LWS_EPOCHS`; 0 for
tau-norm), `tau` and `tau_chosen_on` (tau-norm; with the grid's validation scores
`tau_val_balanced_accuracy`, tau 0 to 2, when chosen there), `scales` (lws), `losses` (crt:
mean loss per epoch; lws: the class-balanced loss before and after), `train_size`,
`feature_samples` (images pushed through the
frozen backbone to extract features; evaluation passes not counted), `stage1` and `stage2`
(`val` and `test` metrics as `flexsample eval` reports them) and `seconds`.

Stage 2 trains with plain cross-entropy whatever `--loss` (the paper's recipe) on batches of
the run's `--batch-size`; cRT with the run's `--lr` and `--weight-decay` (AdamW), LWS with the
authors' SGD settings (`dc.LWS_EPOCHS`, `LWS_LR`, `LWS_MOMENTUM`, `LWS_WEIGHT_DECAY`) and the
run's `--seed`; stage-2 evaluation applies `--logit-adjust` with the full training split's
class counts as the prior.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flexsample.engine.checkpoint import load_checkpoint, save_atomic
from flexsample.training import decouple as dc
from flexsample.training.anchor_features import embed_features
from flexsample.training.evaluate import evaluate

from . import outputs as out_files
from .config import RunConfig
from .progress import Reporter

if TYPE_CHECKING:
    from .run import Setup

KEY = "decouple"  # best.pt's record of a stage 2


def restore_stage1(out: Path) -> bool:
    """If best.pt already holds a stage-2 head (a run killed before results.json), write back
    the stage-1 head and subset counts; True when it did."""
    path = out / out_files.BEST
    if not path.is_file():
        return False
    best = load_checkpoint(path)
    record = best.get(KEY) if isinstance(best, dict) else None
    if not isinstance(record, dict) or "stage1_head" not in record:
        return False
    model = best["model"]  # freshly loaded: changed in place (keeps the state-dict metadata)
    for prefix in record["head_prefixes"]:
        for name in ("weight", "bias"):
            if prefix + name in model:
                model[prefix + name] = record["stage1_head"][name].clone()
    payload = {k: v for k, v in best.items() if k != KEY}
    payload["model"] = model
    payload["subset_counts"] = record["stage1_subset_counts"]
    save_atomic(path, payload)
    return True


def head_prefixes(model: torch.nn.Module) -> list[str]:
    """State-dict prefixes under which `model.head` is stored (a timm head is registered
    twice: as `head.` and inside the backbone)."""
    return [
        f"{n}." if n else ""
        for n, m in model.named_modules(remove_duplicate=False)
        if m is model.head
    ]


def run_stage2(
    cfg: RunConfig,
    setup: Setup,
    out: Path,
    stage1_test: dict[str, Any],
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Stage 2 on the model holding the stage-1 (best.pt) weights, whose test metrics are
    `stage1_test`: the `decouple` object of results.json (`stage1` and `stage2` val/test
    metrics, the stage's settings and seconds); best.pt gets the stage-2 head."""
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    ds, device, model = setup.ds, setup.device, setup.model
    groups = ds.group_of_labels()
    opts = (cfg.logit_adjust, cfg.score_batch_size, cfg.workers)
    best_path = out / out_files.BEST
    best = load_checkpoint(best_path)
    stage1_counts = np.asarray(best["subset_counts"])
    stage1 = {
        "val": evaluate(model, ds.val, device, groups, stage1_counts, *opts),
        "test": stage1_test,
    }
    stage1_head = dc.linear_copy(model.head.weight, model.head.bias)
    full_counts = np.bincount(ds.train.labels, minlength=ds.num_classes)
    stage, samples = _fit(cfg, setup, stage1_head, full_counts, reporter)
    dc.install_head(model, stage.head)
    stage2 = {
        "val": evaluate(model, ds.val, device, groups, full_counts, *opts),
        "test": evaluate(model, ds.test, device, groups, full_counts, *opts),
    }
    _save_best(best_path, best, model, stage1_head, stage1_counts, full_counts, stage)
    doc: dict[str, Any] = {
        "method": cfg.decouple,
        "epochs": stage_epochs(cfg),
        "train_size": int(len(ds.train)),
        "feature_samples": int(samples),
        "stage1": stage1,
        "stage2": stage2,
    }
    if stage.tau is not None:
        doc["tau"] = stage.tau
        doc["tau_chosen_on"] = "given" if cfg.tau is not None else "validation"
        if stage.tau_scores:
            doc["tau_val_balanced_accuracy"] = {f"{k:g}": v for k, v in stage.tau_scores.items()}
    if stage.scales is not None:
        doc["scales"] = [float(v) for v in stage.scales]
    if stage.losses:
        doc["losses"] = [float(v) for v in stage.losses]
    doc["seconds"] = time.perf_counter() - t0
    before = stage1["val"]["balanced_accuracy"]
    after = stage2["val"]["balanced_accuracy"]
    tau = f" (tau {stage.tau:g})" if stage.tau is not None else ""
    reporter.message(
        f"decoupling {cfg.decouple}{tau}: val balanced accuracy {before:.4f} -> {after:.4f}, "
        f"test {stage1['test']['balanced_accuracy']:.4f} -> "
        f"{stage2['test']['balanced_accuracy']:.4f}"
    )
    return doc


def stage_epochs(cfg: RunConfig) -> int:
    """Epochs stage 2 trains: crt `--decouple-epochs`, lws the authors' 5, tau-norm none."""
    return {"crt": cfg.decouple_epochs, "lws": dc.LWS_EPOCHS}.get(cfg.decouple, 0)


def _fit(
    cfg: RunConfig,
    setup: Setup,
    head: torch.nn.Linear,
    full_counts: np.ndarray,
    reporter: Reporter,
) -> tuple[dc.StageResult, int]:
    """The stage-2 head and the images its features took (crt and lws: the training split;
    tau-norm: the validation split where tau is chosen there, none with a given tau)."""
    ds, device, model = setup.ds, setup.device, setup.model
    if cfg.decouple == "tau-norm":
        if cfg.tau is not None:
            return dc.tau_norm(head, ds.num_classes, cfg.tau), 0
        with reporter.phase("decoupling: features of the validation split"):
            val_x = embed_features(model, ds.val, device, cfg.score_batch_size, cfg.workers)
        offset = None
        if cfg.logit_adjust:  # the choice sees the (adjusted) predictions evaluation reports
            prior = np.maximum(full_counts / max(full_counts.sum(), 1), 1e-8)
            offset = cfg.logit_adjust * np.log(prior)
        stage = dc.tau_norm(head, ds.num_classes, None, val_x, ds.val.labels, logit_offset=offset)
        return stage, len(ds.val)
    with reporter.phase("decoupling: features of the training split"):
        train_x = embed_features(model, ds.train, device, cfg.score_batch_size, cfg.workers)
    labels = ds.train.labels
    if cfg.decouple == "lws":  # the authors' epochs of SGD on the C scales
        with reporter.task("decoupling: lws epochs", dc.LWS_EPOCHS) as advance:
            stage = dc.train_lws(
                train_x,
                labels,
                head,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                device=device,
                progress=advance,
            )
        return stage, len(ds.train)
    with reporter.task("decoupling: crt epochs", cfg.decouple_epochs) as advance:
        stage = dc.train_crt(
            train_x,
            labels,
            ds.num_classes,
            epochs=cfg.decouple_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            device=device,
            progress=advance,
        )
    return stage, len(ds.train)


def _save_best(
    path: Path,
    best: dict[str, Any],
    model: torch.nn.Module,
    stage1_head: torch.nn.Linear,
    stage1_counts: np.ndarray,
    full_counts: np.ndarray,
    stage: dc.StageResult,
) -> None:
    """best.pt with the stage-2 weights and the prior they were trained under (the full
    training split's counts: `flexsample eval` adjusts logits with them), stage 1's head kept."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = dict(best)
    payload["model"] = weights
    payload["subset_counts"] = full_counts
    payload[KEY] = {
        "method": stage.method,
        "tau": stage.tau,
        "stage1_head": {
            "weight": stage1_head.weight.detach().clone(),
            "bias": stage1_head.bias.detach().clone(),
        },
        "stage1_subset_counts": stage1_counts,
        "head_prefixes": head_prefixes(model),
    }
    save_atomic(path, payload)
