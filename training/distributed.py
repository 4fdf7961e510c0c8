"""Training under torchrun: the distributed batch schedule and the DDP wrap.

One epoch's global sample order stays what a single process draws, `indices[sampler(labels,
rng)]` with `rng` a pure function of (seed, epoch), so every long-tail sampler (instance,
class-balanced, sqrt) keeps its meaning. That order is cut into global batches of
`--batch-size`; each global batch is split into contiguous rank shares (the layout of
`Ranks.bounds`), so the union of the ranks' batches is the single-process batch, batch by batch.
No rank ever sees another's order: every rank computes the same schedule from the same seed.

The ranks train on exactly the global batches one process trains on (`keep_batch`: all but a
lone trailing sample). A short global batch, fewer than 2 samples per rank (the epoch's last),
goes to as many ranks as get 2 samples each (`short_share`); the others read a stand-in and
weigh it 0, so DDP's all-reduce still gives the global batch's gradient.

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
    `lo`/`hi`: this rank's positions [lo, hi) in the epoch order (a contiguous piece of it).
    `stand_in`: for a rank without samples in a short batch (`lo == hi`), how many of the
    batch's first samples it reads to take part in the gradient all-reduce with weight 0."""

    start: int
    size: int
    lo: int
    hi: int
    stand_in: int = 0

    @property
    def local(self) -> int:
        """This rank's samples of the batch: its weight in the global batch's gradient."""
        return self.hi - self.lo

    @property
    def read(self) -> tuple[int, int]:
        """The positions [lo, hi) this rank reads: its share, or its stand-in samples."""
        if self.local == 0 and self.stand_in:
            return self.start, self.start + self.stand_in
        return self.lo, self.hi

    @property
    def reads(self) -> int:
        lo, hi = self.read
        return hi - lo


def keep_batch(size: int, first: bool, world: int = 1) -> bool:
    """Whether a global batch of `size` is trained on: the single-process rule, whatever the
    number of ranks, so the ranks together train on exactly the batches one process would.

    A lone trailing sample is skipped (it breaks batch norm and adds nothing); a first batch
    of one sample (an epoch of one) is kept. `world` does not change the answer: a short batch
    is shared by `short_share` so that no rank trains on a lone sample."""
    return size >= 2 or (first and size >= 1)


def short_share(start: int, size: int, rank: int, world: int) -> RankBatch:
    """This rank's share of a global batch with fewer than 2 samples per rank.

    The first size // 2 ranks take 2 samples each, the last of them 3 when `size` is odd
    (a batch of 1: rank 0 takes it), so no rank trains on a lone sample (batch norm in train
    mode needs 2); the other ranks have no samples and read the batch's first samples as
    stand-ins, weighted 0, since every rank must take part in DDP's gradient all-reduce. The
    weighted average is then exactly the global batch's gradient."""
    ranks_with_samples = max(1, size // 2)
    if rank < ranks_with_samples:
        lo = 2 * rank
        hi = size if rank == ranks_with_samples - 1 else lo + 2
        return RankBatch(start, size, start + lo, start + hi)
    return RankBatch(start, size, start, start, stand_in=min(2, size))


def rank_batches(
    n: int, batch_size: int, rank: int = 0, world: int = 1, skip_small: bool = True
) -> list[RankBatch]:
    """This rank's batches of an epoch of `n` ordered samples and global batch `batch_size`.

    Pure: a function of (n, batch_size, rank, world) only, identical on every rank apart from
    the shares. With `skip_small` (training) the global batches are those one process trains
    on (`keep_batch`), on every rank alike, so all ranks make the same number of steps; a
    batch with at least 2 samples per rank is split in contiguous shares (`shard_bounds`), a
    shorter one by `short_share`. Without it every batch is split by `shard_bounds` (a rank
    may get one sample or none)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    out = []
    for start in range(0, int(n), int(batch_size)):
        size = min(int(batch_size), int(n) - start)
        if skip_small and not keep_batch(size, start == 0, world):
            continue
        if skip_small and size < 2 * world:
            out.append(short_share(start, size, rank, world))
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
    rank's share of a full global batch; the last batch (short: up to 3 samples) may differ
    from it, so a reader cuts `indices` by the batches' `reads` (`training.data.regroup`)."""
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
    """Positions into the epoch order this rank reads, batch after batch (its shares, and a
    short batch's stand-in samples where it has none)."""
    if not batches:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(*b.read, dtype=np.int64) for b in batches])


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
