"""Ranks and collectives over a `torch.distributed` process group, as the engine needs them.

Why one small module: sharded scoring (the context), sharded evaluation and DDP training all
need the same three things: which contiguous shard of an array this rank owns, the rows of
every rank's shard gathered back in rank order, and rank 0's array on every rank. Everything
else is PyTorch's own stack (torchrun sets up the processes; `torch.distributed` moves data).

`Ranks(group)` with `group=None` and no initialised default group is a single process: every
call is then a no-op that returns its input, so code written against `Ranks` runs unchanged
without torchrun. Tensors travel on the group's device (CUDA for NCCL, CPU for gloo).
Every rank must make the same calls in the same order (collectives); the engine guarantees
that by running the same estimator code on the same gathered arrays on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Ranks:
    """This process's place in a process group: `rank`, `world`, and gather / broadcast."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self.group = group
        active = dist.is_available() and dist.is_initialized()
        if group is not None and not active:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        self.rank = dist.get_rank(group) if active else 0
        self.world = dist.get_world_size(group) if active else 1
        self.device = torch.device("cpu")
        if active and dist.get_backend(group) == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    @classmethod
    def local(cls) -> Ranks:
        """A single process, even under torchrun (nothing is sharded or gathered)."""
        me = object.__new__(cls)
        me.group, me.rank, me.world, me.device = None, 0, 1, torch.device("cpu")
        return me

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous shard of n items (sizes differ by at most one)."""
        return shard_bounds(n, self.rank, self.world)

    def shard(self, items: np.ndarray) -> np.ndarray:
        """This rank's contiguous shard of `items` (all of it in a single process)."""
        lo, hi = self.bounds(len(items))
        return items[lo:hi]

    def gather_rows(self, local: np.ndarray | torch.Tensor) -> np.ndarray:
        """Every rank's `local` rows concatenated in rank order, as numpy, on every rank.

        The shapes may differ in their first dimension only; dtype is kept."""
        arr = local.detach().cpu().numpy() if isinstance(local, torch.Tensor) else local
        arr = np.ascontiguousarray(arr)
        if not self.sharded:
            return arr
        import torch.distributed as dist

        mine = torch.tensor([arr.shape[0]], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(sizes, mine, group=self.group)
        sizes_l = [int(s) for s in sizes]
        most = max(sizes_l)
        padded = np.zeros((most, *arr.shape[1:]), dtype=arr.dtype)
        padded[: arr.shape[0]] = arr
        t = torch.from_numpy(_as_transportable(padded)).to(self.device)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        rows = [p[:s].cpu().numpy() for p, s in zip(parts, sizes_l, strict=True)]
        return _from_transportable(np.concatenate(rows), arr.dtype)

    def broadcast(self, arr: np.ndarray, src: int = 0) -> np.ndarray:
        """Rank `src`'s array on every rank (shape and dtype included)."""
        if not self.sharded:
            return arr
        import torch.distributed as dist

        box = [arr if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self.device)
        return np.asarray(box[0])

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s picklable object on every rank."""
        if not self.sharded:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier(group=self.group)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of shard `rank` of `world` contiguous shards of n items (numpy's array_split)."""
    base, extra = divmod(int(n), int(world))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _as_transportable(arr: np.ndarray) -> np.ndarray:
    """Gloo and NCCL move numeric tensors: booleans travel as uint8."""
    return arr.view(np.uint8) if arr.dtype == np.bool_ else arr


def _from_transportable(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return arr.view(np.bool_) if dtype == np.bool_ else arr
