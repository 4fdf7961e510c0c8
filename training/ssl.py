"""Self-supervised contrastive pre-training (SimCLR-style NT-Xent) on the training images.

Labels are never read: features learnt this way are not biased by the long-tailed label
distribution, which is what prototype anchors need (DESIGN.md, step 1). The trained backbone
weights are cached (keyed by dataset, split, image size, backbone, seed, epochs and initial
weights) so anchors and `--init ssl` share one pre-training.

Two views per image: file-backed splits draw them from the split's own train-time
torchvision v2 augmentation (two independent passes of `iterate`); in-memory tensors (tiny
images) get cheap batched tensor ops instead: small random shifts, a mild zoom, brightness /
contrast jitter, Gaussian noise, and horizontal flips for RGB.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flexsample.datasets.base import LTDataset, Split
from flexsample.datasets.images import progress_task
from flexsample.engine.context import autocast_for
from flexsample.engine.errors import FlexsampleError

from .data import iterate

SSL_CACHE_VERSION = 2  # 2: file-backed views seeded per image (worker-independent)
ModelFactory = Callable[[], nn.Module]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent: each view must pick its partner among the other 2B − 1 embeddings (cosine)."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, partner)


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


class _Projector(nn.Module):
    """The SimCLR projection MLP; thrown away after pre-training."""

    def __init__(self, dim: int, out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


def _view_pairs(
    split: Split,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    gen: torch.Generator,
    num_workers: int | None,
    key: tuple[int, ...] = (0,),
):
    """(view1, view2) batches over `order`: tensor ops in memory, v2 augmentation for files.

    File-backed views are seeded per image by (`key`, view, index), never per worker, so the
    worker count does not change the pre-trained weights."""
    if split.in_memory is not None:
        for x, _ in iterate(split, order, batch_size, True, device):
            x = x.to(device, non_blocking=True)
            yield tensor_view(x, gen), tensor_view(x, gen)
        return
    first = iterate(split, order, batch_size, True, device, num_workers, (*key, 1))
    second = iterate(split, order, batch_size, True, device, num_workers, (*key, 2))
    for (x1, _), (x2, _) in zip(first, second, strict=True):
        yield x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)


def train_simclr(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.5,
    num_workers: int | None = 0,
    progress: Any = None,
) -> nn.Module:
    """Contrastive pre-training of `model.embed` in place (its head is untouched); returns it.

    `progress`: None (silent), a reporter (`task("SSL pre-training", epochs)`, advanced once
    per epoch: a bar on a terminal, a line per epoch in a job log), or a callable advanced by
    the number of images of each batch (the total is `epochs * len(split)`).
    """
    if epochs < 1:
        raise FlexsampleError(f"--ssl-epochs must be >= 1, got {epochs}")
    n = len(split)
    if n < 2:
        raise FlexsampleError("self-supervised pre-training needs at least 2 training images")
    model = model.to(device)
    with torch.no_grad():
        model.eval()
        probe = next(iterate(split, np.arange(min(2, n)), 2, False, device))[0].to(device)
        dim = int(model.embed(probe).shape[1])
    projector = _Projector(dim).to(device)
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    params = [p for p in model.parameters() if id(p) not in head_ids]
    params += list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, n)
    per_batch = progress if callable(progress) and not hasattr(progress, "task") else None
    per_epoch = None if per_batch is not None else progress
    with progress_task(per_epoch, f"SSL pre-training ({epochs} epochs)", epochs) as advance:
        for epoch in range(epochs):
            model.train()
            projector.train()
            order = torch.randperm(n, generator=gen).numpy()
            for v1, v2 in _view_pairs(
                split, order, bs, device, gen, num_workers, (seed, epoch)
            ):
                if len(v1) < 2:
                    continue  # one image has no negatives and breaks batch norm
                with autocast_for(device):
                    z = projector(model.embed(torch.cat([v1, v2])))
                loss = nt_xent(z[: len(v1)], z[len(v1) :], temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if per_batch is not None:
                    per_batch(len(v1))
            advance(1)
    model.eval()
    return model


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (under every name it is registered by)."""
    head = getattr(model, "head", None)
    prefixes = [n for n, m in model.named_modules(remove_duplicate=False) if m is head and n]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "x"


def ssl_cache_path(
    cache_dir: str | Path,
    dataset_name: str,
    split_hash: str,
    image_size: int,
    backbone: str,
    seed: int,
    epochs: int,
    pretrained: str | None = None,
) -> Path:
    """Where the SSL weights for this (dataset, split, size, backbone, seed, epochs, init) live."""
    init = "scratch"
    if pretrained:
        p = Path(pretrained)
        size = p.stat().st_size if p.is_file() else -1
        init = hashlib.sha256(f"{p.resolve()}|{size}".encode()).hexdigest()[:10]
    name = (
        f"{_slug(dataset_name)}-{split_hash}-{int(image_size)}px-{_slug(backbone)}"
        f"-seed{int(seed)}-e{int(epochs)}-{init}-v{SSL_CACHE_VERSION}.pt"
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
    batch_size: int = 256,
    num_workers: int | None = 0,
    progress: Any = None,
) -> dict[str, torch.Tensor]:
    """Backbone weights (head excluded) after SimCLR pre-training; read from the cache if there.

    `model_factory()` builds the classifier as the run configures it (it is built under a
    fork of the RNG seeded by `seed`, so the initial weights are reproducible). `progress`
    follows the pre-training (see `train_simclr`); a cache hit reports a message only.
    """
    device = torch.device(device)
    size = int(image_size or dataset.image_size)
    path = None
    if cache_dir is not None:
        path = ssl_cache_path(
            cache_dir, dataset.name, dataset.split_hash(), size, backbone, seed, ssl_epochs,
            pretrained,
        )
        if path.is_file():
            try:
                weights = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache entry is rebuilt, not fatal
                pass
            else:
                if hasattr(progress, "message"):
                    progress.message(f"SSL pre-training: cached weights {path}")
                return weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
        train_simclr(
            model, dataset.train, epochs=ssl_epochs, seed=seed, device=device,
            batch_size=batch_size, num_workers=num_workers, progress=progress,
        )
    skip = head_keys(model)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            torch.save(weights, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise FlexsampleError(f"cannot write SSL weights to {path}: {exc}") from None
    return weights


def load_ssl_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Initialise `model`'s backbone from SSL weights; the head keeps its fresh init."""
    own = model.state_dict()
    skip = head_keys(model)
    usable = {
        k: v for k, v in weights.items()
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
    **options,
) -> nn.Module:
    """`--init ssl`: load (training first if not cached) the SSL backbone into `model`.

    `options` are those of `ssl_weights` (backbone, seed, ssl_epochs, device, cache_dir, ...).
    """
    return load_ssl_weights(model, ssl_weights(dataset, model_factory, **options))
