"""Feature matrices of the training split for prototype anchors (`--anchor-features`).

Sources: `pixels` (flattened, standardised images: enough for tiny images), `pretrained`
(embed() of the classifier built with the --pretrained weights: a local file or timm's
ImageNet weights), `ssl` (embed() after self-supervised pre-training on the training images,
`--ssl-method` mocov2, simclr or byol, labels unused, cached), and `auto`: pixels for images
of 32 px or less, pretrained when --pretrained is given, else ssl.
"""

from __future__ import annotations

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
from .ssl import DEFAULT_SSL_METHOD, ModelFactory, load_ssl_weights, ssl_weights

FEATURE_SOURCES = ("auto", "pixels", "pretrained", "ssl")
PIXEL_MAX_SIDE = 32  # `pixels` pools larger images down to this side: bounded memory


def resolve_feature_source(source: str, image_size: int, pretrained: str | None) -> str:
    """The concrete source `auto` stands for (others are returned as given, validated)."""
    if source not in FEATURE_SOURCES:
        raise FlexsampleError(
            f"unknown --anchor-features '{source}'; available: {', '.join(FEATURE_SOURCES)}"
        )
    if source != "auto":
        return source
    if image_size <= PIXEL_MAX_SIDE:
        return "pixels"
    return "pretrained" if pretrained else "ssl"


def pixel_features(
    split: Split, batch_size: int = 512, num_workers: int | None = 0, progress: Any = None
) -> np.ndarray:
    """Flattened eval-transform images, each dimension standardised over the split.

    `progress` (None, a reporter or a callable `advance(n)`) follows the images read."""
    cpu = torch.device("cpu")
    rows = []
    with progress_task(progress, "anchor features (pixels)", len(split)) as advance:
        for x, _ in iterate(split, np.arange(len(split)), batch_size, False, cpu, num_workers):
            x = x.float()
            if max(x.shape[-2:]) > PIXEL_MAX_SIDE:
                x = F.adaptive_avg_pool2d(x, PIXEL_MAX_SIDE)
            rows.append(x.flatten(1))
            advance(len(x))
    if not rows:
        return np.zeros((0, 0), np.float32)
    f = torch.cat(rows).double()
    f = (f - f.mean(0)) / (f.std(0, unbiased=False) + 1e-6)
    return f.float().numpy()


@torch.inference_mode()
def embed_features(
    model: nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int | None = 0,
    progress: Any = None,
) -> np.ndarray:
    """embed() of every image of the split, eval mode, eval transform, float32.

    `progress` (None, a reporter or a callable `advance(n)`) follows the images embedded."""
    model = model.to(device).eval()
    rows = []
    n = len(split)
    with progress_task(progress, "anchor features (embedding)", n) as advance:
        for x, _ in iterate(split, np.arange(n), batch_size, False, device, num_workers):
            x = x.to(device, non_blocking=True)
            with autocast_for(device):
                rows.append(model.embed(x).float().cpu())
            advance(len(x))
    if not rows:
        return np.zeros((0, 0), np.float32)
    return torch.cat(rows).numpy().astype(np.float32)


def anchor_features(
    source: str,
    dataset: LTDataset,
    model_factory: ModelFactory,
    *,
    image_size: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    ssl_epochs: int = 20,
    device: str | torch.device = "cpu",
    pretrained: str | None = None,
    backbone: str = "model",
    batch_size: int = 256,
    ssl_method: str = DEFAULT_SSL_METHOD,
    ssl_batch_size: int | None = None,
    num_workers: int | None = 0,
    progress: Any = None,
) -> np.ndarray:
    """(N_train, D) float32 features of `dataset.train` from `source` (see module docstring).

    `model_factory()` builds the classifier as configured (with the --pretrained weights
    loaded when given); `pretrained` is that value (a path or `imagenet`), needed by
    `pretrained` and by `auto`. `batch_size` is that of the embedding pass; `ssl_method` and
    `ssl_batch_size` (None: fits the device) those of the pre-training. SSL weights are cached
    under `cache_dir` (no cache when None); `backbone` is part of the cache key. Labels are
    never used. `progress`: None (silent), a reporter (a task for
    SSL pre-training, per epoch, and one for the feature pass, per batch), or a callable
    `advance(n)` called with the images of every batch processed.
    """
    size = int(image_size or dataset.image_size)
    kind = resolve_feature_source(source, size, pretrained)
    device = torch.device(device)
    if kind == "pixels":
        return pixel_features(dataset.train, num_workers=num_workers, progress=progress)
    if kind == "pretrained":
        if not pretrained:
            raise FlexsampleError(
                "--anchor-features pretrained needs --pretrained (imagenet or a local weights "
                "file)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_factory()
        return embed_features(model, dataset.train, device, batch_size, num_workers, progress)
    weights = ssl_weights(
        dataset, model_factory, backbone=backbone, seed=seed, ssl_epochs=ssl_epochs,
        device=device, cache_dir=cache_dir, image_size=size, pretrained=pretrained,
        ssl_method=ssl_method, ssl_batch_size=ssl_batch_size, num_workers=num_workers,
        progress=progress,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_ssl_weights(model_factory(), weights)
    return embed_features(model, dataset.train, device, batch_size, num_workers, progress)
