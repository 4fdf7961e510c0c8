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
from flexsample.engine.distributed import Ranks
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


def _my_rows(n: int, ranks: Ranks | None) -> np.ndarray:
    """The rows of an n-row split this rank computes: its contiguous shard, or all of them."""
    rows = np.arange(n)
    return ranks.shard(rows) if ranks is not None and ranks.sharded else rows


def _gathered(rows: list[torch.Tensor], ranks: Ranks | None) -> np.ndarray:
    """This rank's row blocks as one float32 array, gathered over the ranks when sharded."""
    local = torch.cat(rows).float().numpy() if rows else np.zeros((0, 0), np.float32)
    if ranks is None or not ranks.sharded:
        return local
    # a rank with an empty shard does not know the width: agree on it first
    width = int(max(ranks.gather_rows(np.array([local.shape[1]], np.int64))))
    if local.shape[0] == 0:
        local = np.zeros((0, width), np.float32)
    return ranks.gather_rows(local)


def pixel_features(
    split: Split,
    batch_size: int = 512,
    num_workers: int | None = 0,
    progress: Any = None,
    ranks: Ranks | None = None,
) -> np.ndarray:
    """Flattened eval-transform images, each dimension standardised over the split.

    `progress` (None, a reporter or a callable `advance(n)`) follows the images read (this
    rank's shard when `ranks` is sharded: each rank reads its shard, the raw rows are gathered
    and every rank standardises the same matrix)."""
    cpu = torch.device("cpu")
    rows = []
    mine = _my_rows(len(split), ranks)
    with progress_task(progress, "anchor features (pixels)", len(mine)) as advance:
        for x, _ in iterate(split, mine, batch_size, False, cpu, num_workers):
            x = x.float()
            if max(x.shape[-2:]) > PIXEL_MAX_SIDE:
                x = F.adaptive_avg_pool2d(x, PIXEL_MAX_SIDE)
            rows.append(x.flatten(1))
            advance(len(x))
    gathered = _gathered(rows, ranks)
    if len(gathered) == 0:
        return np.zeros((0, 0), np.float32)
    f = torch.from_numpy(gathered).double()
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
    ranks: Ranks | None = None,
) -> np.ndarray:
    """embed() of every image of the split, eval mode, eval transform, float32.

    `progress` (None, a reporter or a callable `advance(n)`) follows the images embedded.
    With `ranks` sharded each rank embeds its contiguous shard (the progress follows that
    shard) and every rank returns the gathered (N, D) matrix."""
    model = model.to(device).eval()
    rows = []
    mine = _my_rows(len(split), ranks)
    with progress_task(progress, "anchor features (embedding)", len(mine)) as advance:
        for x, _ in iterate(split, mine, batch_size, False, device, num_workers):
            x = x.to(device, non_blocking=True)
            with autocast_for(device):
                rows.append(model.embed(x).float().cpu())
            advance(len(x))
    gathered = _gathered(rows, ranks)
    if len(gathered) == 0:
        return np.zeros((0, 0), np.float32)
    return gathered.astype(np.float32)


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
    ranks: Ranks | None = None,
) -> np.ndarray:
    """(N_train, D) float32 features of `dataset.train` from `source` (see module docstring).

    `model_factory()` builds the classifier as configured (with the --pretrained weights
    loaded when given); `pretrained` is that value (a path or `imagenet`), needed by
    `pretrained` and by `auto`. `batch_size` is that of the embedding pass; `ssl_method` and
    `ssl_batch_size` (None: fits the device) those of the pre-training. SSL weights are cached
    under `cache_dir` (no cache when None); `backbone` is part of the cache key. Labels are
    never used. `progress`: None (silent), a reporter (a task for
    SSL pre-training, per epoch, and one for the feature pass, per batch), or a callable
    `advance(n)` called with the images of every batch processed. With `ranks` sharded the
    feature pass is sharded and gathered (every rank returns the same matrix) and SSL
    pre-training runs under DDP (see `ssl_weights`).
    """
    size = int(image_size or dataset.image_size)
    kind = resolve_feature_source(source, size, pretrained)
    device = torch.device(device)
    if kind == "pixels":
        return pixel_features(
            dataset.train, num_workers=num_workers, progress=progress, ranks=ranks
        )
    if kind == "pretrained":
        if not pretrained:
            raise FlexsampleError(
                "--anchor-features pretrained needs --pretrained (imagenet or a local weights file)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_factory()
        return embed_features(
            model, dataset.train, device, batch_size, num_workers, progress, ranks
        )
    weights = ssl_weights(
        dataset,
        model_factory,
        backbone=backbone,
        seed=seed,
        ssl_epochs=ssl_epochs,
        device=device,
        cache_dir=cache_dir,
        image_size=size,
        pretrained=pretrained,
        ssl_method=ssl_method,
        ssl_batch_size=ssl_batch_size,
        num_workers=num_workers,
        progress=progress,
        ranks=ranks,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_ssl_weights(model_factory(), weights)
    return embed_features(model, dataset.train, device, batch_size, num_workers, progress, ranks)
