"""Feature-space estimators: kNN density, information density, prototype cosine.

All work on L2-normalised pooled features, so similarities are cosines in [-1, 1].
The kNN search runs in FAISS (exact flat inner-product index; IVF above `ivf_threshold`
database rows; on the model's GPU when faiss has GPU support, sharded over all GPUs when
one process sees several and the pool is IVF-sized). When the model is on CUDA but faiss is
CPU-only, an exact chunked matmul + top-k in torch on that GPU is used instead, because a
CPU search over a large split would then dominate the query step. `search_plan` says which.
"""

from __future__ import annotations

import math
from typing import Annotated

import faiss
import numpy as np
import torch

from flexsample.engine.context import ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.features import class_prototypes, l2_normalize
from flexsample.engine.interfaces import Estimator
from flexsample.engine.options import opt
from flexsample.engine.registry import ESTIMATORS, register_estimator

from . import functional as F
from .basic import check_mc_options
from .params import IVFThreshold, Knn, MCMode, MCSamples, MCScore

DEFAULT_IVF_THRESHOLD = 200_000
_GPU_RESOURCES: dict[int, faiss.StandardGpuResources] = {}


def faiss_gpu_count() -> int:
    """GPUs visible to faiss (0 for a CPU-only build)."""
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:
        return 0


def _several_ranks() -> bool:
    """True under torchrun with world size > 1: each rank then keeps to its own GPU."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def search_plan(
    n: int,
    device: torch.device | str | None = None,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    gpus: int | None = None,
) -> tuple[str, str]:
    """How `knn_search` searches `n` database rows: (kind, where), so that it can be reported.

    kind: "flat" (exact), or "ivf" above `ivf_threshold` rows. where: "cpu" (faiss on the
    CPU); "gpu" (faiss on the model's GPU: one GPU, or one rank of several under torchrun,
    each on its LOCAL_RANK device); "gpus" (faiss sharded over every GPU it sees, when one
    process sees several and the pool is large, i.e. IVF-sized); "torch" (exact chunked
    matmul + top-k on the model's GPU when faiss is CPU-only, at any size: the IVF below
    still scans 1/16 of the rows per query, and a GPU matmul outruns a CPU by far more than
    16x; benchmarks/density_scale.py). `gpus`: faiss's GPU count (default: ask faiss;
    injectable for tests).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    kind = "ivf" if n > ivf_threshold else "flat"
    if dev.type != "cuda":
        return kind, "cpu"
    gpus = faiss_gpu_count() if gpus is None else gpus
    if gpus <= 0:
        return "flat", "torch"
    return kind, "gpus" if kind == "ivf" and gpus > 1 and not _several_ranks() else "gpu"


def _gpu_resources(gpu: int) -> faiss.StandardGpuResources:
    res = _GPU_RESOURCES.get(gpu)
    if res is None:
        res = _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    return res


def build_index(
    database: np.ndarray,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    gpu: int | None = None,
    shard: bool = False,
) -> faiss.Index:
    """Inner-product index over normalised rows: exact flat, or IVF above `ivf_threshold`.

    IVF: nlist = 4 sqrt(n) lists (at least 39 training rows each), k-means (faiss's spherical
    default, 10 iterations) on a seeded sample of 64 rows per list, nprobe = nlist / 16 (at
    least 16, at most 2048, the faiss GPU limit): a sixteenth of the lists keeps recall@10
    near 0.99 on clustered features (tests/test_density_scale.py) for about 1/16 of the exact
    search's work. `gpu`: a faiss GPU id for the index and the k-means; `shard`: the index is
    split over every GPU faiss sees instead (contiguous row shards, results merged by faiss).
    """
    n, d = database.shape
    index: faiss.Index = faiss.IndexFlatIP(d)
    if n > ivf_threshold:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(index, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nlist, max(16, nlist // 16), 2048)
        if gpu is not None:  # k-means assignment on the GPU: minutes on a CPU at 1M x 512
            assign = faiss.index_cpu_to_gpu(_gpu_resources(gpu), gpu, faiss.IndexFlatIP(d))
            index.clustering_index = assign
        rng = np.random.default_rng(0)
        index.train(database[np.sort(rng.choice(n, min(n, nlist * 64), replace=False))])
        # faiss's stub types it Index, not Index | None (a null pointer); older faiss: no stub
        index.clustering_index = None  # type: ignore[assignment, unused-ignore]
    if shard:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        index = faiss.index_cpu_to_all_gpus(index, options)
    elif gpu is not None:
        index = faiss.index_cpu_to_gpu(_gpu_resources(gpu), gpu, index)
    index.add(database)
    return index


def _torch_search(
    database: np.ndarray, queries: np.ndarray, k: int, device: torch.device, chunk: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k on a torch device: (similarities, ids), both (nq, k).

    Queries go in chunks whose similarity block stays under 2^28 floats (1 GiB).
    """
    chunk = chunk or max(1, min(4096, (1 << 28) // max(len(database), 1)))
    db = torch.from_numpy(database).to(device)
    sims, ids = [], []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[start : start + chunk]).to(device)
        s, i = torch.topk(q @ db.T, k, dim=1)
        sims.append(s.cpu())
        ids.append(i.cpu())
    return torch.cat(sims).numpy(), torch.cat(ids).numpy().astype(np.int64)


def knn_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k most similar database rows to each query (normalised rows).

    The index follows `search_plan`: faiss on the CPU for a CPU (or no) device; on a CUDA
    device a faiss GPU index on that device (sharded over all GPUs for a large pool in a
    process that sees several), or an exact torch search there when faiss is CPU-only.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    _, where = search_plan(database.shape[0], dev, ivf_threshold)
    if where == "torch":
        return _torch_search(database, queries, k, dev)
    gpu = None if where == "cpu" else dev.index or 0
    index = build_index(database, ivf_threshold, gpu, shard=where == "gpus")
    sims, ids = index.search(queries, k)
    return sims, ids.astype(np.int64)


def knn_density(
    features: np.ndarray,
    query_ids: np.ndarray | None = None,
    k: int = 10,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean cosine similarity of each query row to its k nearest other rows of `features`.

    `query_ids` are row indices into `features` (default: all rows); the query row itself is
    excluded (when exact duplicates push it out of the k + 1 results, the last one is dropped
    instead). With fewer than k other rows, all of them are used; with none, the density is 0.

    Search (`knn_search`, `search_plan`): exact faiss flat index; IVF above `ivf_threshold`
    rows; on a CUDA `device`, a faiss GPU index (sharded over several GPUs for an IVF-sized
    pool in one process), or exact torch on that GPU when faiss is CPU-only.
    """
    n = len(features)
    query_ids = np.arange(n) if query_ids is None else np.asarray(query_ids, dtype=np.int64)
    k_eff = min(int(k), n - 1)
    if k_eff <= 0 or not len(query_ids):
        return np.zeros(len(query_ids), dtype=np.float64)
    database = l2_normalize(features)
    sims, ids = knn_search(database, database[query_ids], k_eff + 1, ivf_threshold, device)
    drop = ids == query_ids[:, None]
    drop[~drop.any(axis=1), -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # exactly one dropped entry per row
    valid = ids >= 0  # IVF may return fewer than asked (-1 ids)
    keep = valid & ~drop
    total = np.where(keep, sims, 0.0).sum(axis=1, dtype=np.float64)
    return total / np.maximum(keep.sum(axis=1), 1)


def _check_knn(knn: int, ivf_threshold: int) -> None:
    if isinstance(knn, bool) or not isinstance(knn, int | np.integer) or knn < 1:
        raise FlexsampleError(f"--knn must be an integer >= 1, got {knn!r}")
    if isinstance(ivf_threshold, bool) or not isinstance(ivf_threshold, int | np.integer):
        raise FlexsampleError(f"ivf_threshold must be an integer, got {ivf_threshold!r}")


@register_estimator("density")
class DensityEstimator(Estimator):
    """kNN density: mean cosine similarity to the k nearest training samples; typical first.

    The neighbours come from the whole training split (subset and pool), the candidate itself
    excluded; k = `knn` (default 10).
    """

    needs = frozenset({"features"})

    def __init__(self, knn: Knn = 10, ivf_threshold: IVFThreshold = DEFAULT_IVF_THRESHOLD) -> None:
        _check_knn(knn, ivf_threshold)
        self.knn = int(knn)
        self.ivf_threshold = int(ivf_threshold)

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        features = ctx.features(np.arange(ctx.num_items))
        return knn_density(features, candidates, self.knn, self.ivf_threshold, ctx.device)


@register_estimator("info-density")
class InfoDensityEstimator(Estimator):
    """Information density: MC-dropout uncertainty x ((1 + density) / 2) ** density_beta.

    The uncertainty is the `mcdropout` score chosen by `mc_score` (BALD by default;
    `mc_score=entropy` gives the entropy of the MC-averaged prediction), over `mc_samples`
    draws in `mc_mode`. The kNN density (as in `density`, k = `knn`) is a cosine in [-1, 1],
    rescaled to [0, 1] so that any real power is defined; beta = 0 is the uncertainty alone.
    """

    needs = frozenset({"mc", "features"})

    def __init__(
        self,
        mc_samples: MCSamples = 20,
        mc_score: MCScore = "bald",
        mc_mode: MCMode = "head",
        knn: Knn = 10,
        density_beta: Annotated[float, opt("exponent of the density term", ge=0, le=100)] = 1.0,
        ivf_threshold: IVFThreshold = DEFAULT_IVF_THRESHOLD,
    ) -> None:
        check_mc_options(mc_samples, mc_score, mc_mode)
        _check_knn(knn, ivf_threshold)
        beta = float(density_beta)
        if not math.isfinite(beta) or beta < 0:
            raise FlexsampleError(
                f"--density-beta must be a finite number >= 0, got {density_beta}"
            )
        self.mc_samples, self.mc_score, self.mc_mode = int(mc_samples), mc_score, mc_mode
        self.knn, self.density_beta, self.ivf_threshold = int(knn), beta, int(ivf_threshold)

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        # MC first: in head mode it shares the candidates' backbone pass with the features
        u = ctx.reduce_mc(candidates, self.mc_samples, F.MC_SCORES[self.mc_score], self.mc_mode)
        features = ctx.features(np.arange(ctx.num_items))
        rho = knn_density(features, candidates, self.knn, self.ivf_threshold, ctx.device)
        return u * np.clip((1.0 + rho) / 2.0, 0.0, 1.0) ** self.density_beta


@register_estimator("prototype-cosine")
class PrototypeCosineEstimator(Estimator):
    """Cosine similarity to the class prototype over the current subset (formerly 'typicality').

    The prototype of class c is the normalised mean of the normalised features of the
    subset's class-c samples (the anchor criterion of the method). A class with no sample
    in the subset falls back to the prototype of its candidates. Called `typicality` before
    TypiClust (`typiclust`) arrived, whose typicality is a kNN density; the old name still
    builds this estimator, with a FutureWarning.
    """

    needs = frozenset({"features", "labels"})

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        labels = ctx.labels
        num_classes = max(ctx.num_classes, int(labels.max(initial=-1)) + 1)
        sub = np.asarray(ctx.subset_indices, dtype=np.int64)
        protos, present = class_prototypes(ctx.features(sub), labels[sub], num_classes)
        cand_labels = labels[candidates]
        fc = l2_normalize(ctx.features(candidates)).astype(np.float64)
        missing = np.flatnonzero(~present)
        if len(missing) and np.isin(cand_labels, missing).any():
            own, own_present = class_prototypes(fc, cand_labels, num_classes)
            fill = missing[own_present[missing]]
            protos[fill] = own[fill]
        return np.einsum("nd,nd->n", fc, protos[cand_labels])


TYPICALITY_DEPRECATION = (
    "estimator 'typicality' is deprecated: it is now called 'prototype-cosine' "
    "(TypiClust is 'typiclust')"
)
ESTIMATORS.alias("typicality", "prototype-cosine", TYPICALITY_DEPRECATION)
TypicalityEstimator = PrototypeCosineEstimator  # the old class name, for imports
