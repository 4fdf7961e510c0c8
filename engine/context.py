"""The scoring context: computes, lazily and once, what an estimator declared it needs.

One backbone pass per sample gives the pooled features; probabilities and the T head-only
MC-dropout draws are derived from them (exact for a model whose only dropout is before the
head). MC draws are streamed batch by batch as (T, batch, C) tensors, so nothing ever holds
N x T x C. Everything runs batched on the model's device, under bf16 autocast on CUDA.

MC source: dropout masks by default; given `snapshots` (the weights of a snapshot ensemble,
`engine.snapshots`), the T draws are instead the members' deterministic softmax outputs, one
backbone pass per member per batch, T = the number of members (`samples` and `mode` of
`iter_mc` are then ignored; `mc_draws` says what T is).

Memory: the MC batch (samples per streamed (T, batch, C) tensor) shrinks below the score
batch size so that one batch's working tensors fit in the MC memory budget: by default half
of the memory free on the model's device when MC draws start (cudaMemGetInfo on CUDA;
MemAvailable on a CPU, there at most 4 GiB), or `mc_memory` bytes. When even one sample's
T draws do not fit, a FlexsampleError names --mc-samples. Scores do not depend on the MC
batch size.

Sharded (`ranks`, a `engine.distributed.Ranks` over a torch.distributed process group): each
rank computes its contiguous shard of whatever is missing (backbone features, MC reductions,
MC draws) and the results are gathered, so every rank holds the same full arrays and takes the
same selection. Features are always gathered whole (every rank may read any of them); MC
reductions gather one value per candidate; `iter_mc` gathers each block's draws. Every rank
must call the context the same way (the same estimator code on the same arrays does).
Dropout masks are hashed from (seed, step, index, draw), so a sharded score equals the
single-process score of the same weights.

Fault point (`engine.faults`): `scoring`, once per context, after its first computed batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from .distributed import Ranks
from .errors import EstimatorError, FlexsampleError, ParameterError
from .faults import fault_point
from .interfaces import NEEDS
from .masks import MaskSampler, hashed_dropouts
from .snapshots import device_members, ensemble_probs

if TYPE_CHECKING:
    from .interfaces import ContractModule

# (indices, batch_size) -> model-ready input batches covering `indices` in order
InputFn = Callable[[np.ndarray, int], Iterable[torch.Tensor]]
ProgressFn = Callable[[int], None]

MC_MODES = ("head", "full")


def tensor_inputs(x: torch.Tensor) -> InputFn:
    """An InputFn over an in-memory tensor holding the whole split."""

    def batches(indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(indices), batch_size):
            yield x[torch.as_tensor(indices[start : start + batch_size])]

    return batches


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ScoringContext:
    """Per-query-step cache of features / probabilities / MC draws over training indices.

    `needs` restricts what may be read (an estimator's declaration); reading anything else
    raises an EstimatorError naming `owner`. Indices are global indices into the training split.
    `snapshots`: at least 2 state dicts of `model` (CPU or device tensors) whose softmax
    outputs are the MC draws instead of dropout masks (`--mc-source snapshots`).
    `ranks`: shard the work over a process group (module docstring); None: this process alone.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: InputFn,
        labels: np.ndarray,
        *,
        seed: int,
        step: int,
        batch_size: int = 256,
        subset_indices: np.ndarray | None = None,
        needs: Iterable[str] = NEEDS,
        owner: str = "estimator",
        progress: ProgressFn | None = None,
        mc_memory: int | None = None,
        snapshots: Sequence[Mapping[str, torch.Tensor]] | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        if not all(hasattr(model, a) for a in ("embed", "head", "dropout_p")):
            raise FlexsampleError(
                "the model must expose embed(x), head (nn.Linear) and dropout_p "
                "(wrap it with flexsample.training.models.adapt_model)"
            )
        self.model = cast("ContractModule", model)  # the contract is the check just above
        self.inputs = inputs
        self._labels = np.asarray(labels, dtype=np.int64)
        self.seed = int(seed)
        self.step = int(step)
        self.batch_size = int(batch_size)
        self.subset_indices = (
            np.zeros(0, np.int64) if subset_indices is None else np.asarray(subset_indices)
        )
        self.needs = frozenset(needs)
        unknown = self.needs - NEEDS
        if unknown:
            raise EstimatorError(
                f"estimator '{owner}' declares unknown needs {sorted(unknown)}; "
                f"accepted: {sorted(NEEDS)}"
            )
        self.owner = owner
        self.progress = progress
        self.device = model_device(model)
        self.num_items = len(self._labels)
        self._features: np.ndarray | None = None
        self._have_features = np.zeros(self.num_items, dtype=bool)
        self._probs: np.ndarray | None = None
        self._have_probs = np.zeros(self.num_items, dtype=bool)
        self.stats = {"backbone_items": 0, "mc_items": 0}
        self.mc_memory = None if mc_memory is None else int(mc_memory)
        if snapshots is not None and len(snapshots) < 2:
            raise FlexsampleError(
                f"a snapshot ensemble needs at least 2 members, got {len(snapshots)}"
            )
        self.snapshots = None if snapshots is None else list(snapshots)
        self._snapshot_weights: list[dict[str, torch.Tensor]] | None = None  # on the device
        self.ranks = Ranks.local() if ranks is None else ranks
        self._batches = [0]  # shared by reference with every view: the fault point fires once
        self._parent: ScoringContext | None = None  # a view's root context (for_estimator)

    def _advance(self, n: int) -> None:
        """Progress of the whole group: this rank's items times the number of ranks."""
        if self.progress is not None:
            self.progress(n * self.ranks.world)

    def _batch_done(self) -> None:
        self._batches[0] += 1
        if self._batches[0] == 1:
            fault_point("scoring")

    # -- access control -------------------------------------------------------------------
    def _require(self, need: str) -> None:
        if need not in self.needs:
            raise EstimatorError(
                f"estimator '{self.owner}' reads '{need}' but does not declare it in needs "
                f"(declared: {sorted(self.needs) or 'nothing'})"
            )

    def for_estimator(self, owner: str, needs: Iterable[str]) -> ScoringContext:
        """A view sharing this context's caches, restricted to another declaration."""
        needs = frozenset(needs)
        unknown = needs - NEEDS
        if unknown:
            raise EstimatorError(
                f"estimator '{owner}' declares unknown needs {sorted(unknown)}; "
                f"accepted: {sorted(NEEDS)}"
            )
        view = object.__new__(ScoringContext)
        view.__dict__.update(self.__dict__)
        view.owner, view.needs = owner, needs
        view._parent = self._root()  # caches live in the root, however deep the views
        return view

    def _root(self) -> ScoringContext:
        return self if self._parent is None else self._parent

    @property
    def labels(self) -> np.ndarray:
        self._require("labels")
        return self._labels

    @property
    def rng(self) -> np.random.Generator:
        """A generator seeded by (seed, step): the same draws for the same query step."""
        return np.random.default_rng([self.seed, self.step, 0x5EED])

    @property
    def num_classes(self) -> int:
        return int(self.model.head.out_features)

    # -- features and probabilities -------------------------------------------------------
    def features(self, indices: np.ndarray) -> np.ndarray:
        """Pooled features (n, D) float32 of the current classifier, eval mode."""
        self._require("features")
        return self._root()._ensure_features(np.asarray(indices, dtype=np.int64))

    def probs(self, indices: np.ndarray) -> np.ndarray:
        """Softmax probabilities (n, C) float32 of the deterministic (eval) model."""
        self._require("probs")
        return self._root()._ensure_probs(np.asarray(indices, dtype=np.int64))

    def _embed_batches(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(chunk indices, features on device as float32), one backbone pass."""
        self.model.eval()
        start = 0
        for x in self.inputs(indices, self.batch_size):
            n = len(x)
            chunk = indices[start : start + n]
            start += n
            x = x.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast_for(self.device):
                f = self.model.embed(x)
            self.stats["backbone_items"] += n
            self._advance(n)
            self._batch_done()
            yield chunk, f.float()
        if start != len(indices):
            raise FlexsampleError(
                f"the input source yielded {start} items for {len(indices)} indices"
            )

    def _store_features(self, chunk: np.ndarray, f: torch.Tensor) -> None:
        if self._features is None:
            self._features = np.zeros((self.num_items, f.shape[1]), dtype=np.float32)
        self._features[chunk] = f.cpu().numpy()
        self._have_features[chunk] = True

    def _ensure_features(self, indices: np.ndarray) -> np.ndarray:
        missing = np.unique(indices[~self._have_features[indices]])
        if self.ranks.sharded:
            if len(missing):  # the same decision on every rank: the caches are the same
                mine = self.ranks.shard(missing)
                dim = int(self.model.head.in_features)
                parts = [f.cpu().numpy() for _, f in self._embed_batches(mine)]
                local = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
                self._store_features(missing, torch.from_numpy(self.ranks.gather_rows(local)))
        else:
            for chunk, f in self._embed_batches(missing):
                self._store_features(chunk, f)
        if self._features is None:  # no indices at all
            return np.zeros((0, int(self.model.head.in_features)), dtype=np.float32)
        return self._features[indices]

    @torch.inference_mode()
    def _head_probs(self, f: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        return torch.softmax(nn.functional.linear(f, head.weight.float(), _bias(head)), dim=-1)

    def _ensure_probs(self, indices: np.ndarray) -> np.ndarray:
        missing = np.unique(indices[~self._have_probs[indices]])
        self._ensure_features(missing)  # one (sharded) backbone pass for all of them
        if self._probs is None:
            self._probs = np.zeros((self.num_items, self.num_classes), dtype=np.float32)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            f = torch.from_numpy(self._ensure_features(chunk)).to(self.device)
            self._probs[chunk] = self._head_probs(f).cpu().numpy()
            self._have_probs[chunk] = True
        return self._probs[indices]

    # -- MC draws: dropout or snapshots ---------------------------------------------------
    @property
    def mc_source(self) -> str:
        """Where MC draws come from: 'dropout' or 'snapshots'."""
        return "dropout" if self.snapshots is None else "snapshots"

    def mc_draws(self, samples: int) -> int:
        """T, the number of draws `iter_mc(indices, samples, ...)` yields per sample: `samples`
        with dropout, the number of ensemble members with snapshots."""
        return int(samples) if self.snapshots is None else len(self.snapshots)

    def iter_mc(
        self, indices: np.ndarray, samples: int, mode: str = "head"
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (chunk indices, probs of shape (T, chunk, C)) over `indices`, in order.

        `head`: dropout masks on the pooled features, hashed from (seed, step, index, draw);
        the T head passes are one batched matmul. `full`: T complete stochastic passes with
        every dropout layer of the model active (models with dropout inside the backbone),
        and the feature dropout before the head; every mask is hashed from (seed, step, index,
        draw, layer, element) as in head mode, so neither batch size nor candidate order
        changes a score. Batches may be smaller than the score batch size (memory budget).

        With a snapshot source, `samples` and `mode` are ignored: the draws are the ensemble
        members' deterministic outputs, T = `mc_draws(samples)` = the number of members.
        """
        root = self._check_mc(samples, mode)
        indices = np.asarray(indices, dtype=np.int64)
        if root.ranks.sharded:
            yield from root._iter_mc_sharded(indices, samples, mode)
        else:
            yield from root._iter_mc_local(indices, samples, mode)

    def _check_mc(self, samples: int, mode: str) -> ScoringContext:
        """The checks of an MC read; returns the root context (which holds the caches)."""
        self._require("mc")
        root = self._root()
        if root.snapshots is None and samples < 2:
            raise ParameterError(f"mc_samples must be >= 2, got {samples}", "mc_samples")
        if mode not in MC_MODES:
            raise ParameterError(
                f"unknown mc_mode '{mode}'; accepted: {', '.join(MC_MODES)}", "mc_mode"
            )
        return root

    def _iter_mc_local(
        self, indices: np.ndarray, samples: int, mode: str
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self.snapshots is not None:
            yield from self._iter_mc_snapshots(indices, self.snapshots)
        elif mode == "full":
            yield from self._iter_mc_full(indices, samples)
        else:
            yield from self._iter_mc_head(indices, samples)

    def _prepare_sharded_mc(self, indices: np.ndarray, mode: str) -> None:
        """Head-mode draws start from features: compute them sharded and gathered first."""
        if self.snapshots is None and mode == "head":
            self._ensure_features(indices)

    def _iter_mc_sharded(
        self, indices: np.ndarray, samples: int, mode: str
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Blocks of `world x batch size` indices: each rank draws its shard of a block, the
        block's draws are gathered (T, block, C) on every rank and yielded in order."""
        self._prepare_sharded_mc(indices, mode)
        block = self.batch_size * self.ranks.world
        draws, classes = self.mc_draws(samples), self.num_classes
        for start in range(0, len(indices), block):
            chunk = indices[start : start + block]
            parts = [p for _, p in self._iter_mc_local(self.ranks.shard(chunk), samples, mode)]
            local = (
                torch.cat(parts, dim=1).float().cpu() if parts else torch.zeros((draws, 0, classes))
            )
            rows = self.ranks.gather_rows(local.transpose(0, 1).contiguous())
            yield chunk, torch.from_numpy(rows).transpose(0, 1).to(self.device)

    def _mc_batch(
        self,
        samples: int,
        per_draw_sample: int,
        fixed_per_draw: int = 0,
        flag: str = "--mc-samples",
    ) -> int:
        """Samples per MC batch so that one batch's tensors fit in the memory budget; `flag`
        is the option that sets `samples` (named when even one sample does not fit)."""
        budget = self.mc_memory if self.mc_memory is not None else mc_memory_budget(self.device)
        per_sample = samples * per_draw_sample
        room = budget - samples * fixed_per_draw
        if room < per_sample:
            most = max(0, budget // (per_draw_sample + fixed_per_draw))
            raise FlexsampleError(
                f"{flag} {samples}: one candidate's draws need about "
                f"{_gib(per_sample + samples * fixed_per_draw)}, more than the MC memory budget "
                f"of {_gib(budget)} on {self.device} (half the free memory); use at most "
                f"{flag} {most}"
            )
        return max(1, min(self.batch_size, room // per_sample))

    def _iter_mc_head(
        self, indices: np.ndarray, samples: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        head = self.model.head
        p = float(self.model.dropout_p)
        if not 0.0 < p < 1.0:
            raise FlexsampleError(
                f"MC dropout needs a model with dropout_p in (0, 1), this one has {p}"
            )
        units, classes = int(head.in_features), int(head.out_features)
        # per (draw, sample): keep mask (1 byte), hash and scratch (int32), masked features
        # (float32) per unit; logits, softmax and the reducer's float64 copies per class
        step = self._mc_batch(samples, units * 13 + classes * 48, units * 28)
        scale = 1.0 / (1.0 - p)
        # the inverted-dropout scale lives in the (D, C) weight, not in a (T, B, D) multiply
        weight = head.weight.detach().float().t() * scale
        bias = _bias(head)
        masks = MaskSampler(self.seed, self.step, samples, weight.shape[0], p, self.device)

        def draws(chunk: np.ndarray, f: torch.Tensor) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            for lo in range(0, len(chunk), step):
                part = chunk[lo : lo + step]
                idx = torch.as_tensor(part, device=self.device)
                keep = masks.keep(idx)  # (T, B, D), hashed from (seed, step, index, draw, unit)
                x = torch.mul(f[lo : lo + step].unsqueeze(0), keep, out=masks.workspace(len(part)))
                logits = torch.matmul(x, weight)
                if bias is not None:
                    logits += bias
                self.stats["mc_items"] += len(part)
                self._batch_done()
                yield part, torch.softmax(logits, dim=-1)

        with torch.inference_mode():
            if self._have_features[indices].all() or not len(indices):
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    assert self._features is not None  # every index of `indices` has features
                    f = torch.from_numpy(self._features[chunk]).to(self.device)
                    yield from draws(chunk, f)
            elif not self._have_features[indices].any() and len(np.unique(indices)) == len(indices):
                for chunk, f in self._embed_batches(indices):  # fused with the backbone pass
                    self._store_features(chunk, f)
                    yield from draws(chunk, f)
            else:
                self._ensure_features(indices)
                yield from self._iter_mc_head(indices, samples)

    def _iter_mc_full(
        self, indices: np.ndarray, samples: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        model = self.model
        model.eval()
        p = float(model.dropout_p)
        classes = int(model.head.out_features)
        # per (draw, sample): the list of T softmax outputs, their stack, the reducer's copies
        step = self._mc_batch(samples, classes * 56)
        start = 0
        with torch.inference_mode(), hashed_dropouts(model, self.seed, self.step) as masks:
            for x in self.inputs(indices, self.batch_size):
                batch = indices[start : start + len(x)]
                start += len(x)
                x = x.to(self.device)
                for lo in range(0, len(batch), step):
                    chunk = batch[lo : lo + step]
                    masks.set_samples(torch.as_tensor(chunk, device=self.device))
                    out = []
                    for t in range(samples):
                        masks.set_draw(t)
                        with autocast_for(self.device):
                            f = model.embed(x[lo : lo + step])
                            f = masks.dropout(f, p)  # the feature dropout before the head
                            logits = model.head(f)
                        out.append(torch.softmax(logits.float(), dim=-1))
                    self.stats["backbone_items"] += samples * len(chunk)
                    self.stats["mc_items"] += len(chunk)
                    self._advance(len(chunk))
                    self._batch_done()
                    yield chunk, torch.stack(out)
        if start != len(indices):
            raise FlexsampleError(
                f"the input source yielded {start} items for {len(indices)} indices"
            )

    def _iter_mc_snapshots(
        self, indices: np.ndarray, snapshots: Sequence[Mapping[str, torch.Tensor]]
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """The members' softmax outputs stacked as (T, chunk, C): per input batch, one
        backbone pass per member under the context's autocast; members' weights moved to the
        device once per context (once per query)."""
        model = self.model
        model.eval()
        if self._snapshot_weights is None:
            self._snapshot_weights = device_members(model, snapshots, self.device)
        weights = self._snapshot_weights
        members = len(weights)
        # per (member, sample): the softmax output, its stack, the reducer's float64 copies
        step = self._mc_batch(members, self.num_classes * 56, flag="--snapshots")
        start = 0
        with torch.inference_mode():
            for x in self.inputs(indices, self.batch_size):
                batch = indices[start : start + len(x)]
                start += len(x)
                x = x.to(self.device, non_blocking=True)
                if self.device.type == "cuda" and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                for lo in range(0, len(batch), step):
                    chunk = batch[lo : lo + step]
                    with autocast_for(self.device):
                        out = torch.stack(list(ensemble_probs(model, weights, x[lo : lo + step])))
                    self.stats["backbone_items"] += members * len(chunk)
                    self.stats["mc_items"] += len(chunk)
                    self._advance(len(chunk))
                    self._batch_done()
                    yield chunk, out
        if start != len(indices):
            raise FlexsampleError(
                f"the input source yielded {start} items for {len(indices)} indices"
            )

    def reduce_mc(
        self,
        indices: np.ndarray,
        samples: int,
        reducer: Callable[[torch.Tensor], torch.Tensor],
        mode: str = "head",
    ) -> np.ndarray:
        """Apply `reducer` ((T, B, C) -> (B,)) to each streamed batch; concatenate as float64.

        Sharded, each rank reduces its own shard and only the values are gathered."""
        root = self._check_mc(samples, mode)
        indices = np.asarray(indices, dtype=np.int64)
        if not root.ranks.sharded:
            return self._reduce_mc_local(indices, samples, reducer, mode)
        root._prepare_sharded_mc(indices, mode)
        mine = root.ranks.shard(indices)
        return root.ranks.gather_rows(self._reduce_mc_local(mine, samples, reducer, mode, True))

    def _reduce_mc_local(
        self,
        indices: np.ndarray,
        samples: int,
        reducer: Callable[[torch.Tensor], torch.Tensor],
        mode: str,
        local: bool = False,
    ) -> np.ndarray:
        out = np.empty(len(indices), dtype=np.float64)
        pos = 0
        draws = (
            self._root()._iter_mc_local(indices, samples, mode)
            if local
            else self.iter_mc(indices, samples, mode)
        )
        for chunk, probs in draws:
            out[pos : pos + len(chunk)] = reducer(probs).double().cpu().numpy()
            pos += len(chunk)
        return out


def _bias(head: nn.Linear) -> torch.Tensor | None:
    return None if head.bias is None else head.bias.detach().float()


CPU_MC_MEMORY_CAP = 4 << 30  # bigger MC batches do not run faster on a CPU


def mc_memory_budget(device: torch.device) -> int:
    """Bytes one MC batch may use: half of what is free on `device` now (at most 4 GiB on a
    CPU, where larger batches gain nothing and the memory is shared with everything else)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    return min(_available_ram() // 2, CPU_MC_MEMORY_CAP)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 4 << 30  # unknown: assume 4 GiB available


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
