"""Training under torchrun: the distributed batch schedule and the DDP wrap.

One epoch's global sample order stays what a single process draws, `indices[sampler(labels,
rng)]` with `rng` a pure function of (seed, epoch), so every long-tail sampler (instance,
class-balanced, sqrt) keeps its meaning. That order is cut into global batches of
`--batch-size`; each global batch is split into contiguous rank shares (the layout of
`Ranks.bounds`), so the union of the ranks' batches is the single-process batch, batch by batch.
No rank ever sees another's order: every rank computes the same schedule from the same seed.

Why not `torch.utils.data.DistributedSampler`: it shards the epoch (rank r takes every W-th
sample), so the ranks' step t batches together are not the single-process step t batch, it pads
with repeated samples, and it knows nothing of re-sampling samplers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flexsample.engine.distributed import Ranks, shard_bounds
from flexsample.engine.errors import FlexsampleError


@dataclass(frozen=True)
class RankBatch:
    """One global batch of an epoch and this rank's share of it.

    `start`/`size`: the global batch's first position in the epoch order and its length;
    `lo`/`hi`: this rank's positions [lo, hi) in the epoch order (a contiguous piece of it)."""

    start: int
    size: int
    lo: int
    hi: int

    @property
    def local(self) -> int:
        return self.hi - self.lo


def keep_batch(size: int, first: bool, world: int) -> bool:
    """Whether a global batch of `size` is trained on.

    A single process skips a lone trailing sample (it breaks batch norm and adds nothing).
    Across `world` ranks the same rule reads: skip a batch after the first with fewer than 2
    samples per rank (2 * world in all). The first batch is kept when every rank gets at least
    one sample (a rank without samples cannot take part in the gradient all-reduce)."""
    if size >= 2 * world:
        return True
    return first and size >= world


def rank_batches(
    n: int, batch_size: int, rank: int = 0, world: int = 1, skip_small: bool = True
) -> list[RankBatch]:
    """This rank's batches of an epoch of `n` ordered samples and global batch `batch_size`.

    Pure: a function of (n, batch_size, rank, world) only, identical on every rank apart from
    the shares. With `skip_small` the global batches `keep_batch` rejects are left out (on
    every rank alike, so all ranks make the same number of steps)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    out = []
    for start in range(0, int(n), int(batch_size)):
        size = min(int(batch_size), int(n) - start)
        if skip_small and not keep_batch(size, start == 0, world):
            continue
        lo, hi = shard_bounds(size, rank, world)
        out.append(RankBatch(start, size, start + lo, start + hi))
    return out


@dataclass(frozen=True)
class EpochShare:
    """What one rank reads in an epoch: its batches, the dataset indices in reading order, the
    augmentation seeds of those reads (None: the loader derives them itself), and the loader
    batch size that cuts `indices` into exactly those batches."""

    batches: list[RankBatch]
    indices: np.ndarray
    seeds: np.ndarray | None
    step_size: int


def epoch_share(
    order: np.ndarray,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    key: tuple[int, ...] | None = None,
) -> EpochShare:
    """This rank's share of an epoch whose global order is `order` (dataset indices).

    One process reads the kept prefix of `order` itself (the loader seeds its augmentation by
    `key`, bit for bit as before). Sharded, a rank reads its share of every kept global batch;
    with `key` the augmentation seeds are computed over the whole global order and sliced, so
    an image is augmented exactly as in the single-process pass. The loader batch size is the
    rank's share of a full global batch: only the last batch can be smaller (shares grow with
    the batch), so cutting `indices` by it reproduces the schedule."""
    order = np.asarray(order, dtype=np.int64)
    batches = rank_batches(len(order), batch_size, rank, world)
    if world == 1:
        end = batches[-1].start + batches[-1].size if batches else 0
        return EpochShare(batches, order[:end], None, int(batch_size))
    positions = local_positions(batches)
    seeds = None
    if key is not None:
        from flexsample.datasets.images import augmentation_seeds

        seeds = augmentation_seeds(key, order)[positions]
    lo, hi = shard_bounds(batch_size, rank, world)
    return EpochShare(batches, order[positions], seeds, hi - lo)


def local_positions(batches: list[RankBatch]) -> np.ndarray:
    """Positions into the epoch order this rank reads, batch after batch."""
    if not batches:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(b.lo, b.hi, dtype=np.int64) for b in batches])


def local_permutation(perm: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """A permutation of positions 0..hi-lo-1 derived from a permutation of the global batch.

    The global permutation's entries that fall in this rank's share [lo, hi), in the order they
    appear, shifted to local positions. Every rank draws the same global permutation (so the
    generator advances alike everywhere) and with one rank this is that permutation itself."""
    perm = np.asarray(perm)
    mine = perm[(perm >= lo) & (perm < hi)]
    return (mine - lo).astype(np.int64)


def wrap_ddp(
    model: nn.Module,
    ranks: Ranks | None,
    sync_bn: bool = False,
    broadcast_buffers: bool = True,
) -> nn.Module:
    """The module to call forward on: `model` in DistributedDataParallel when sharded.

    `model` stays the plain module (its parameters are the DDP wrapper's, so scoring and
    checkpoints keep using it). `sync_bn` turns its BatchNorm layers into SyncBatchNorm in
    place (statistics over the global batch; a collective per BN layer and step; CUDA only,
    a FlexsampleError on CPU, raised before anything is converted). Without it
    each rank normalises with its share's statistics and the wrapper broadcasts rank 0's
    running statistics before each forward. On CUDA the wrapper runs on the model's device;
    on CPU (gloo) without device ids. `broadcast_buffers` False keeps buffers per rank (SSL's
    memory bank). Single process: `model` itself."""
    if ranks is None or not ranks.sharded:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if sync_bn and device.type != "cuda":
        raise FlexsampleError(
            "--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); "
            "drop it on CPU: each process then normalises with its share of the batch"
        )
    if sync_bn:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=ranks.group)
        if converted is not model:  # the root itself was a BatchNorm layer
            raise ValueError("--sync-bn needs a model whose root is not a BatchNorm layer")
    options: dict[str, object] = {"process_group": ranks.group}
    if not broadcast_buffers:  # newer PyTorch names it forward_sync_buffers
        params = inspect.signature(DDP.__init__).parameters
        options[
            "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        ] = False
    if device.type == "cuda":
        return DDP(model, device_ids=[device.index], output_device=device.index, **options)
    return DDP(model, device_ids=None, **options)


def broadcast_buffers(model: nn.Module, ranks: Ranks | None) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, in place.

    Without SyncBatchNorm each rank updates its running statistics from its own share; after
    an epoch this makes every rank's model the same as rank 0's, buffers included."""
    if ranks is None or not ranks.sharded:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        moved = buf.detach().to(ranks.device)
        dist.broadcast(moved, src=_global_rank0(ranks), group=ranks.group)
        if moved is not buf:
            buf.data.copy_(moved.to(buf.device))


def all_sum(values: list[float], ranks: Ranks | None) -> np.ndarray:
    """The element-wise sum of `values` over the ranks (float64), on every rank."""
    arr = np.asarray(values, dtype=np.float64)[None]
    if ranks is None or not ranks.sharded:
        return arr[0]
    return ranks.gather_rows(arr).sum(0)


def _global_rank0(ranks: Ranks) -> int:
    """The global rank of the group's rank 0 (what `dist.broadcast` wants as `src`)."""
    if ranks.group is None:
        return 0
    import torch.distributed as dist

    return dist.get_global_rank(ranks.group, 0)
