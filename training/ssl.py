"""Self-supervised pre-training on the training images: MoCo v2 (the paper's), SimCLR or BYOL.

Labels are never read: features learnt this way are not biased by the long-tailed label
distribution, which is what prototype anchors need (DESIGN.md, step 1). The losses, projection
heads, memory bank and momentum updates come from the `lightly` library (the `ssl` extra,
imported only when pre-training runs). The trained backbone weights are cached (keyed by
dataset, split, image size, backbone, seed, epochs, method, batch size and initial weights) so
anchors and `--init ssl` share one pre-training.

Two views per image: file-backed splits draw them from the split's own train-time
torchvision v2 augmentation (two independent passes of `iterate`); in-memory tensors (tiny
images) get cheap batched tensor ops instead: small random shifts, a mild zoom, brightness /
contrast jitter, Gaussian noise, and horizontal flips for RGB.

Under torchrun (`ranks` sharded) the pre-training runs in DistributedDataParallel: every rank
draws the same global image order and takes its contiguous share of each global batch
(`--ssl-batch-size` stays the global batch), and each rank's loss is scaled by its share so the
averaged gradient weighs every image alike. In-memory views are drawn for the whole global
batch on every rank (the same generator draws as one process; each rank keeps its share), file
views are seeded per image over the global order, so the union of the ranks' views is the
single-process batch. What does not carry over: negatives are per rank (SimCLR contrasts
within a rank's share; MoCo keeps one memory bank per rank, of that rank's past keys, since
gathering keys of unequal shares is not worth a collective per step: each bank has the
single-process size, so it spans `world` times as many steps), so the loss is not the
single-process loss. Rank 0 alone writes the cache; every rank ends with rank 0's weights.

Memory: a training step holds the activations of every image it back-propagates through
(SimCLR and BYOL: both views, 2B images; MoCo v2: the query view, B images, plus the key view
without gradients), so the batch size B bounds the peak. `default_ssl_batch_size` picks one
that fits the device and the method.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flexsample._optional import require
from flexsample.datasets.base import LTDataset, Split
from flexsample.datasets.images import augmentation_seeds, progress_task
from flexsample.engine.context import autocast_for
from flexsample.engine.distributed import Ranks, shard_bounds
from flexsample.engine.errors import FlexsampleError

from .data import SplitLoader, iterate
from .distributed import (
    RankBatch,
    broadcast_buffers,
    local_positions,
    rank_batches,
    wrap_ddp,
)

SSL_CACHE_VERSION = 3  # 3: the method and the batch size are part of the key
SSL_METHODS = ("mocov2", "simclr", "byol")
DEFAULT_SSL_METHOD = "mocov2"
# Images back-propagated per step at 224 px: on a CPU, 32 keep a ResNet-18 pre-training under
# 4 GB resident (about 47 MB per such image, measured); on a GPU, 256 (MoCo v2's batch).
# MoCo v2 back-propagates one view (batch size = budget), SimCLR and BYOL both (half that).
# Smaller images get proportionally larger batches (same pixels per step), within
# [SSL_BATCH_MIN, SSL_BATCH_MAX].
SSL_GRAD_IMAGES_AT_224 = {"cpu": 32, "cuda": 256}
GRAD_VIEWS = {"mocov2": 1, "simclr": 2, "byol": 2}
SSL_BATCH_MIN, SSL_BATCH_MAX = 8, 256
MOCO_QUEUE_MAX = 4096  # negatives kept by MoCo's memory bank (fewer on small data sets)
ModelFactory = Callable[[], nn.Module]


def default_ssl_batch_size(
    device: str | torch.device, image_size: int, method: str = DEFAULT_SSL_METHOD
) -> int:
    """The SSL batch size that fits `device` at `image_size` px for `method`: the images it
    back-propagates per step stay within SSL_GRAD_IMAGES_AT_224 (scaled by pixel count)."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    budget = SSL_GRAD_IMAGES_AT_224[kind] / GRAD_VIEWS[check_method(method)]
    scaled = budget * (224 * 224) / max(1, int(image_size)) ** 2
    return int(min(SSL_BATCH_MAX, max(SSL_BATCH_MIN, math.floor(scaled))))


def check_method(method: str) -> str:
    """`method` if it is one of SSL_METHODS, else one FlexsampleError line listing them."""
    if method not in SSL_METHODS:
        raise FlexsampleError(
            f"unknown --ssl-method '{method}'; available: {', '.join(SSL_METHODS)}"
        )
    return method


def tensor_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of a normalised (B, C, H, W) batch by batched tensor ops."""
    b, c, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    max_shift = 1.0 if max(h, w) <= 16 else max(h, w) / 8.0
    zoom = 1.0 - 0.15 * rand(b) if max(h, w) > 16 else torch.ones(b, device=dev)
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0) if c == 3 else torch.ones(b, device=dev)
    # integer pixel shifts expressed in grid units (2 / size per pixel)
    sx = torch.round((rand(b) * 2 - 1) * max_shift) * 2.0 / w
    sy = torch.round((rand(b) * 2 - 1) * max_shift) * 2.0 / h
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, 0, 2] = sx
    theta[:, 1, 2] = sy
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    v = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.8 + 0.4 * rand(b)).view(b, 1, 1, 1)
    brightness = (0.4 * rand(b) - 0.2).view(b, 1, 1, 1)
    noise = torch.randn(v.shape, generator=gen).to(dev) * 0.1
    return v * contrast + brightness + noise


def _view_pairs(
    split: Split,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    gen: torch.Generator,
    num_workers: int | None,
    key: tuple[int, ...] = (0,),
    ranks: Ranks | None = None,
):
    """(view1, view2, batch) over `order`: tensor ops in memory, v2 augmentation for files.

    File-backed views are seeded per image by (`key`, view, index), never per worker, so the
    worker count does not change the pre-trained weights. `batch` (a `RankBatch`) places the
    views in the global batch; with `ranks` sharded they are this rank's share of it (in memory
    the whole global batch is augmented so `gen` advances as in one process; file-backed
    batches with fewer than 2 images per rank are not read at all)."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None and ranks.sharded else (0, 1)
    if split.in_memory is not None:
        start = 0
        for x, _ in iterate(split, order, batch_size, True, device):
            x = x.to(device, non_blocking=True)
            v1, v2 = tensor_view(x, gen), tensor_view(x, gen)
            size = len(x)
            lo, hi = shard_bounds(size, rank, world)
            yield v1[lo:hi], v2[lo:hi], RankBatch(start, size, start + lo, start + hi)
            start += size
        return
    if world == 1:
        first = iterate(split, order, batch_size, True, device, num_workers, (*key, 1))
        second = iterate(split, order, batch_size, True, device, num_workers, (*key, 2))
        start = 0
        for (x1, _), (x2, _) in zip(first, second, strict=True):
            batch = RankBatch(start, len(x1), start, start + len(x1))
            start += len(x1)
            yield x1.to(device, non_blocking=True), x2.to(device, non_blocking=True), batch
        return
    batches = [
        b
        for b in rank_batches(len(order), batch_size, rank, world, skip_small=False)
        if b.size >= 2 * world
    ]
    positions = local_positions(batches)
    mine = order[positions]
    lo, hi = shard_bounds(batch_size, rank, world)
    views = [
        SplitLoader(split, True, device, num_workers)(
            mine, hi - lo, seeds=augmentation_seeds((*key, v), order)[positions]
        )
        for v in (1, 2)
    ]
    for batch, (x1, _), (x2, _) in zip(batches, *views, strict=True):
        yield x1.to(device, non_blocking=True), x2.to(device, non_blocking=True), batch


class _Step(nn.Module):
    """An objective's loss as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, objective: _Objective, device: torch.device) -> None:
        super().__init__()
        self.objective = objective
        self.device = device

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(v1, v2, self.device)


def _lightly(method: str) -> ModuleType:
    """The lightly package with the submodules pre-training uses (the `ssl` extra)."""
    lightly = require("lightly", "ssl", f"--ssl-method {method}")
    for sub in ("loss", "models.modules.heads", "models.utils", "utils.scheduler"):
        require(f"lightly.{sub}", "ssl", f"--ssl-method {method}")
    return lightly


class _Objective(nn.Module):
    """One SSL method around `model.embed`: its heads, its loss per view pair, its momentum.

    `trainable()` lists the method's own parameters that the optimiser updates with the
    backbone; `after_step` runs after each optimiser step (momentum encoders)."""

    def __init__(
        self, model: nn.Module, dim: int, lightly: ModuleType, batch_size: int, n_images: int
    ) -> None:
        super().__init__()
        self.model = model
        self.lightly = lightly

    def loss(self, v1: torch.Tensor, v2: torch.Tensor, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def after_step(self, step: int, total: int) -> None:
        """Nothing by default (SimCLR has no momentum encoder)."""


class _SimCLR(_Objective):
    """SimCLR: a 2-layer MLP projection, NT-Xent over the 2B views of a batch (temperature
    0.5). Both views pass the backbone as one batch, as flexsample's SimCLR always did."""

    temperature = 0.5

    def __init__(self, model, dim, lightly, batch_size, n_images) -> None:
        super().__init__(model, dim, lightly, batch_size, n_images)
        heads = lightly.models.modules.heads
        self.projector = heads.SimCLRProjectionHead(dim, dim, 128, batch_norm=False)
        self.criterion = lightly.loss.NTXentLoss(temperature=self.temperature)

    def loss(self, v1, v2, device):
        with autocast_for(device):
            z = self.projector(self.model.embed(torch.cat([v1, v2])))
        z = z.float()
        return self.criterion(z[: len(v1)], z[len(v1) :])

    def trainable(self):
        return list(self.projector.parameters())


class _Momentum(_Objective):
    """A method with a momentum (EMA) copy of the backbone and its projection head."""

    momentum = (0.99, 1.0)  # cosine schedule of the EMA factor over the whole pre-training

    def _make_momentum(self) -> None:
        deactivate = self.lightly.models.utils.deactivate_requires_grad
        self.model_m = copy.deepcopy(self.model)
        self.projector_m = copy.deepcopy(self.projector)
        deactivate(self.model_m)
        deactivate(self.projector_m)

    def after_step(self, step, total):
        m = self.lightly.utils.scheduler.cosine_schedule(step, total, *self.momentum)
        update = self.lightly.models.utils.update_momentum
        update(self.model, self.model_m, m)
        update(self.projector, self.projector_m, m)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        with autocast_for(device):
            return self.projector_m(self.model_m.embed(x)).float()


class _MoCoV2(_Momentum):
    """MoCo v2: queries from `model`, keys from its momentum copy, InfoNCE against a memory
    bank of past keys (temperature 0.2, 2-layer MLP projection). One loss per pair, as in the
    paper: only the query view is back-propagated, half of SimCLR's activations."""

    temperature = 0.2

    def __init__(self, model, dim, lightly, batch_size, n_images) -> None:
        super().__init__(model, dim, lightly, batch_size, n_images)
        self.projector = lightly.models.modules.heads.MoCoProjectionHead(dim, dim, 128)
        # fewer queued keys than images, so a batch's own images are rarely among them
        queue = int(min(MOCO_QUEUE_MAX, max(batch_size, n_images - batch_size)))
        self.criterion = lightly.loss.NTXentLoss(
            temperature=self.temperature, memory_bank_size=(queue, 128)
        )
        self._make_momentum()

    def loss(self, v1, v2, device):
        with autocast_for(device):
            q = self.projector(self.model.embed(v1)).float()
        return self.criterion(q, self._keys(v2, device))

    def trainable(self):
        return list(self.projector.parameters())


class _BYOL(_Momentum):
    """BYOL: online projection + prediction heads, a momentum target, negative cosine
    similarity, symmetrised over the two views (no negatives, so no memory bank)."""

    def __init__(self, model, dim, lightly, batch_size, n_images) -> None:
        super().__init__(model, dim, lightly, batch_size, n_images)
        heads = lightly.models.modules.heads
        hidden = min(4096, 4 * dim)
        self.projector = heads.BYOLProjectionHead(dim, hidden, 256)
        self.predictor = heads.BYOLPredictionHead(256, hidden, 256)
        self.criterion = lightly.loss.NegativeCosineSimilarity()
        self._make_momentum()

    def loss(self, v1, v2, device):
        b = len(v1)
        both = torch.cat([v1, v2])
        with autocast_for(device):
            p = self.predictor(self.projector(self.model.embed(both))).float()
        t = self._keys(both, device)
        return 0.5 * (self.criterion(p[:b], t[b:]) + self.criterion(p[b:], t[:b]))

    def trainable(self):
        return [*self.projector.parameters(), *self.predictor.parameters()]


OBJECTIVES: dict[str, type[_Objective]] = {"mocov2": _MoCoV2, "simclr": _SimCLR, "byol": _BYOL}


def train_ssl(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    method: str = DEFAULT_SSL_METHOD,
    batch_size: int = 256,
    lr: float = 1e-3,
    num_workers: int | None = 0,
    progress: Any = None,
    losses: list[float] | None = None,
    ranks: Ranks | None = None,
) -> nn.Module:
    """Self-supervised pre-training of `model.embed` in place (its head is untouched).

    AdamW (`lr`, cosine decay over all steps) updates the backbone and the method's heads.
    `progress`: None (silent), a reporter (`task("SSL pre-training", epochs)`, advanced once
    per epoch: a bar on a terminal, a line per epoch in a job log), or a callable advanced by
    the number of images of each batch (the total is `epochs * len(split)`; under DDP the
    global batch's images, so rank 0's count is the global one). `losses`, when given,
    receives the loss of every step (under DDP this rank's, on its share: no collective, so a
    caller may pass it on rank 0 alone).
    `ranks` sharded: DDP over the global batch `batch_size` (module docstring); every rank
    returns the same weights. Returns `model`.
    """
    check_method(method)
    if epochs < 1:
        raise FlexsampleError(f"--ssl-epochs must be >= 1, got {epochs}")
    if batch_size < 2:
        raise FlexsampleError(f"--ssl-batch-size must be >= 2, got {batch_size}")
    n = len(split)
    if n < 2:
        raise FlexsampleError("self-supervised pre-training needs at least 2 training images")
    ranks = ranks if ranks is not None and ranks.sharded else None
    world = ranks.world if ranks is not None else 1
    if ranks is not None and min(batch_size, n) < 2 * world:
        raise FlexsampleError(
            f"--ssl-batch-size {batch_size} is the global batch: with {world} processes it "
            f"(and the training images, {n}) must be at least {2 * world} (2 per process)"
        )
    lightly = _lightly(method)
    model = model.to(device)
    with torch.no_grad():
        model.eval()
        probe = next(iterate(split, np.arange(min(2, n)), 2, False, device))[0].to(device)
        dim = int(model.embed(probe).shape[1])
    bs = min(batch_size, n)
    objective = OBJECTIVES[method](model, dim, lightly, bs, n).to(device)
    head = getattr(model, "head", None)
    head_params = list(head.parameters()) if isinstance(head, nn.Module) else []
    head_ids = {id(p) for p in head_params}
    params = [p for p in model.parameters() if id(p) not in head_ids]
    params += objective.trainable()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(n / bs))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(seed)
    per_batch = progress if callable(progress) and not hasattr(progress, "task") else None
    per_epoch = None if per_batch is not None else progress
    # DDP reduces the gradients of every trainable parameter: the unused head sits out, and
    # buffers stay per rank (MoCo's memory bank; BatchNorm statistics are rank 0's at the end)
    head_grad = [p.requires_grad for p in head_params]
    if ranks is not None:
        for p in head_params:
            p.requires_grad_(False)
    step_loss = wrap_ddp(_Step(objective, device), ranks, broadcast_buffers=False)
    step = 0
    try:
        with progress_task(per_epoch, f"SSL pre-training ({epochs} epochs)", epochs) as advance:
            for epoch in range(epochs):
                objective.train()
                order = torch.randperm(n, generator=gen).numpy()
                pairs = _view_pairs(
                    split, order, bs, device, gen, num_workers, (seed, epoch), ranks
                )
                for v1, v2, batch in pairs:
                    if batch.size < 2 * world:
                        continue  # one image has no negatives and breaks batch norm
                    loss = step_loss(v1, v2)
                    opt.zero_grad(set_to_none=True)
                    if ranks is None:
                        loss.backward()
                    else:  # DDP averages over ranks: weigh each by its share of the batch
                        (loss * (batch.local * world / batch.size)).backward()
                    opt.step()
                    sched.step()
                    objective.after_step(step, total)
                    step += 1
                    if losses is not None:
                        losses.append(float(loss.detach()))
                    if per_batch is not None:
                        per_batch(batch.size if ranks is not None else len(v1))
                advance(1)
    finally:
        for p, flag in zip(head_params, head_grad, strict=True):
            p.requires_grad_(flag)
    broadcast_buffers(model, ranks)
    model.eval()
    return model


def ssl_samples(n_images: int, epochs: int, batch_size: int) -> int:
    """Augmented views `train_ssl` forwards: 2 per image per epoch, as `train_ssl` iterates
    (a lone trailing image is skipped there, so here too). Momentum-encoder passes of the
    same views are not counted again: the figure compares methods, not FLOPs."""
    n = int(n_images)
    if n < 2 or epochs < 1:
        return 0
    bs = min(int(batch_size), n)
    per_epoch = n - (1 if n % bs == 1 else 0)
    return 2 * per_epoch * int(epochs)


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (under every name it is registered by)."""
    head = getattr(model, "head", None)
    prefixes = [n for n, m in model.named_modules(remove_duplicate=False) if m is head and n]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "x"


def _init_key(pretrained: str | None) -> str:
    """The initial weights in a cache name: scratch, imagenet, or a digest of the file."""
    if not pretrained:
        return "scratch"
    if pretrained == "imagenet":
        return "imagenet"
    p = Path(pretrained)
    size = p.stat().st_size if p.is_file() else -1
    return hashlib.sha256(f"{p.resolve()}|{size}".encode()).hexdigest()[:10]


def ssl_cache_path(
    cache_dir: str | Path,
    dataset_name: str,
    split_hash: str,
    image_size: int,
    backbone: str,
    seed: int,
    epochs: int,
    pretrained: str | None = None,
    method: str = DEFAULT_SSL_METHOD,
    batch_size: int = 256,
) -> Path:
    """Where the SSL weights for this (dataset, split, size, backbone, seed, epochs, method,
    batch size, init) live."""
    name = (
        f"{_slug(dataset_name)}-{split_hash}-{int(image_size)}px-{_slug(backbone)}"
        f"-seed{int(seed)}-e{int(epochs)}-{_slug(method)}-b{int(batch_size)}"
        f"-{_init_key(pretrained)}-v{SSL_CACHE_VERSION}.pt"
    )
    return Path(cache_dir) / "ssl" / name


def ssl_weights(
    dataset: LTDataset,
    model_factory: ModelFactory,
    *,
    backbone: str,
    seed: int,
    ssl_epochs: int,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    pretrained: str | None = None,
    ssl_method: str = DEFAULT_SSL_METHOD,
    ssl_batch_size: int | None = None,
    num_workers: int | None = 0,
    progress: Any = None,
    ranks: Ranks | None = None,
) -> dict[str, torch.Tensor]:
    """Backbone weights (head excluded) after SSL pre-training; read from the cache if there.

    `model_factory()` builds the classifier as the run configures it (it is built under a
    fork of the RNG seeded by `seed`, so the initial weights are reproducible).
    `ssl_batch_size` None picks `default_ssl_batch_size` for the device and image size.
    `progress` follows the pre-training (see `train_ssl`); a cache hit reports a message only.
    `ranks` sharded: rank 0 alone reads the cache and sends a hit to every rank (no shared
    file system needed); on a miss every rank trains under DDP, rank 0 writes the cache and
    a failed write ends every rank with the same error. Every rank returns the same weights.
    """
    ranks = ranks if ranks is not None and ranks.sharded else None
    method = check_method(ssl_method)
    device = torch.device(device)
    size = int(image_size or dataset.image_size)
    bs = int(ssl_batch_size or default_ssl_batch_size(device, size, method))
    path = None
    main = ranks is None or ranks.is_main
    if cache_dir is not None:
        path = ssl_cache_path(
            cache_dir,
            dataset.name,
            dataset.split_hash(),
            size,
            backbone,
            seed,
            ssl_epochs,
            pretrained,
            method,
            bs,
        )
        cached = _read_cache(path) if main else None
        if ranks is not None:
            cached = ranks.broadcast_object(cached)
        if cached is not None:
            if hasattr(progress, "message"):
                progress.message(f"SSL pre-training: cached weights {path}")
            return cached
    if hasattr(progress, "message"):
        where = f"{device}" if ranks is None else f"{ranks.world} processes ({device})"
        progress.message(
            f"SSL pre-training: {method}, batch size {bs}, {ssl_epochs} epochs on {where}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
        train_ssl(
            model,
            dataset.train,
            epochs=ssl_epochs,
            seed=seed,
            device=device,
            method=method,
            batch_size=bs,
            num_workers=num_workers,
            progress=progress,
            ranks=ranks,
        )
    skip = head_keys(model)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    if path is not None:
        error = _write_cache(path, weights) if main else None
        if ranks is not None:
            error = ranks.broadcast_object(error)  # doubles as the barrier after the write
        if error is not None:
            raise FlexsampleError(error)
    return weights


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached weights at `path`, or None (absent, or damaged: rebuilt, not fatal)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _write_cache(path: Path, weights: dict[str, torch.Tensor]) -> str | None:
    """Write the weights atomically; the error line if that fails, else None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save(weights, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        return f"cannot write SSL weights to {path}: {exc}"
    return None


def load_ssl_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Initialise `model`'s backbone from SSL weights; the head keeps its fresh init."""
    own = model.state_dict()
    skip = head_keys(model)
    usable = {
        k: v
        for k, v in weights.items()
        if k in own and k not in skip and tuple(v.shape) == tuple(own[k].shape)
    }
    expected = [k for k in own if k not in skip]
    if len(usable) != len(expected):
        missing = sorted(set(expected) - set(usable))[:5]
        raise FlexsampleError(
            f"SSL weights do not match this model (missing or mis-shaped: {missing}...); "
            "were they trained for another --backbone?"
        )
    model.load_state_dict(usable, strict=False)
    return model


def init_from_ssl(
    model: nn.Module,
    dataset: LTDataset,
    model_factory: ModelFactory,
    ranks: Ranks | None = None,
    **options: Any,
) -> nn.Module:
    """`--init ssl`: load (training first if not cached) the SSL backbone into `model`.

    `options` are those of `ssl_weights` (backbone, seed, ssl_epochs, ssl_method, ...);
    `ranks` sharded: pre-training under DDP, the same weights loaded on every rank.
    """
    return load_ssl_weights(model, ssl_weights(dataset, model_factory, ranks=ranks, **options))
