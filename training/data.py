"""Batches for training, scoring and evaluation.

In-memory splits (tiny images) are sliced directly. File-backed splits go through one
DataLoader per (split, train/eval) that lives as long as its `SplitLoader`: the index order
changes every epoch through a mutable sampler, so worker processes (persistent) and pinned
memory (CUDA) are set up once, not per epoch or per scoring pass.

Train-time augmentation is seeded per item, not per worker: for a training pass the sampler
yields `(index, seed)` pairs, the seed a pure function of the pass's key (run seed, epoch),
the sample index and how often that index already occurred in the pass (see
`flexsample.datasets.images.augmentation_seeds`). Whichever worker process reads an item, it
draws the same crop, flips and jitter, so `--workers 0`, `1` or `8` train on the same tensors,
and the main process's RNG (dropout) is never consumed by data loading.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from flexsample.datasets.base import Split
from flexsample.datasets.images import augmentation_seeds, dataloader_options
from flexsample.engine.distributed import Ranks


class _Order(Sampler):
    """A sampler whose order (and per-position augmentation seeds) is replaced before each pass."""

    def __init__(self) -> None:
        self.order = np.zeros(0, dtype=np.int64)
        self.seeds: np.ndarray | None = None

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        if self.seeds is None:
            return iter(self.order.tolist())
        return zip(self.order.tolist(), self.seeds.tolist(), strict=True)

    def __len__(self) -> int:
        return len(self.order)


class SplitLoader:
    """(x, y) batches of one split over any index order, with the train or eval transform.

    `seed` keys the augmentation of training passes that are not given their own `key`.
    """

    def __init__(
        self,
        split: Split,
        train: bool,
        device: torch.device,
        num_workers: int | None = 0,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.train = train
        self.device = torch.device(device)
        self.num_workers = num_workers  # None: chosen by dataloader_options
        self.seed = int(seed)
        self.passes = 0  # training passes so far: the default augmentation key
        self._order = _Order()
        self._loader: DataLoader | None = None
        self._batch_size = 0

    def _make_loader(self, batch_size: int) -> DataLoader:
        cached = getattr(self.split, "cache", None) is not None
        opts = dataloader_options(self.device, self.num_workers, self.train, cached)
        return DataLoader(
            self.split.torch_dataset(self.train),
            batch_size=batch_size,
            sampler=self._order,
            drop_last=False,
            # worker base seeds come from here, not from the global RNG (which would then
            # advance differently with and without persistent workers); items are seeded anyway
            generator=torch.Generator().manual_seed(self.seed),
            **opts,
        )

    def __call__(
        self,
        indices: np.ndarray,
        batch_size: int,
        key: Sequence[int] | None = None,
        seeds: np.ndarray | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over `indices` in order. `key` (e.g. (seed, epoch)) seeds a training pass's
        augmentation; without it the loader's seed and its pass count are used. `seeds`
        (one per index) replaces both: a rank reading its share of a global order passes the
        seeds computed over the whole order, so its images are augmented as one process's."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.split.in_memory is not None:
            labels = torch.as_tensor(self.split.labels)
            for start in range(0, len(indices), batch_size):
                idx = torch.as_tensor(indices[start : start + batch_size])
                yield self.split.in_memory[idx], labels[idx]
            return
        if not self.train:
            seeds = None
        elif seeds is not None:
            seeds = np.asarray(seeds, dtype=np.int64)
            if len(seeds) != len(indices):
                raise ValueError(f"{len(seeds)} augmentation seeds for {len(indices)} indices")
            self.passes += 1
        else:
            if key is None:
                key = (self.seed, self.passes)
            self.passes += 1
            seeds = augmentation_seeds(key, indices)
        if self._loader is None or batch_size != self._batch_size:
            self._loader, self._batch_size = self._make_loader(batch_size), batch_size
        self._order.order = indices
        self._order.seeds = seeds
        yield from self._loader

    def inputs(self, indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """The engine's InputFn: input batches only."""
        for x, _ in self(indices, batch_size):
            yield x


def regroup(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], sizes: Sequence[int]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) stream of `batches` cut again into batches of exactly `sizes`.

    A rank's loader reads with one batch size (its share of a full global batch); a short
    last global batch can give it a few more or fewer samples than that (see
    `training.distributed.short_share`). Batches that already have the size pass through
    untouched; others are joined or split. Too few or too many samples: RuntimeError."""
    it = iter(batches)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    have = 0
    for size in sizes:
        while have < size:
            try:
                x, y = next(it)
            except StopIteration:
                raise RuntimeError(f"the loader ended {size - have} samples short") from None
            xs.append(x)
            ys.append(y)
            have += len(y)
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        xs, ys, have = ([x[size:]], [y[size:]], have - size) if have > size else ([], [], 0)
        yield (x, y) if len(y) == size else (x[:size], y[:size])
    extra = have + sum(len(y) for _, y in it)
    if extra:
        raise RuntimeError(f"the loader read {extra} samples more than the schedule has")


def iterate(
    split: Split,
    indices: np.ndarray,
    batch_size: int,
    train: bool,
    device: torch.device,
    num_workers: int | None = 0,
    key: Sequence[int] = (0,),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass of (x, y) batches over `indices` in the given order (the caller shuffles).

    `key` seeds the augmentation of a training pass (give each pass its own)."""
    yield from SplitLoader(split, train, device, num_workers)(indices, batch_size, key)


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    loader: SplitLoader,
    batch_size: int = 256,
    ranks: Ranks | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, C) of the eval-mode model over the loader's whole split.

    With `ranks` sharded each rank predicts its contiguous shard and the rows are gathered, so
    every rank returns the full (N, C) array (per-sample, so equal to one process's rows)."""
    model.eval()
    rows = np.arange(len(loader.split))
    if ranks is not None and ranks.sharded:
        return ranks.gather_rows(_predict(model, loader, ranks.shard(rows), batch_size))
    return _predict(model, loader, rows, batch_size)


def _predict(
    model: torch.nn.Module, loader: SplitLoader, rows: np.ndarray, batch_size: int
) -> np.ndarray:
    from flexsample.engine.context import autocast_for

    device = loader.device
    out = []
    for x, _ in loader(rows, batch_size):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits = model(x)
        out.append(torch.softmax(logits.float(), -1).cpu())
    if not out:
        return np.zeros((0, model.head.out_features), np.float32)
    return torch.cat(out).numpy()
