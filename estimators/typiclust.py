"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active learning on a budget").

Low-budget active learning should label *typical* samples, not uncertain ones, while staying
diverse: cluster the data into |L| + B clusters (L: labelled, B: budget), then repeatedly take
the largest cluster holding the fewest labelled samples and label its most typical member.

Typicality(x) = 1 / (mean Euclidean distance from x to its K nearest neighbours), K = `knn`
(20 in the paper), on L2-normalised features, as the authors' code loads its features (and
a classifier's feature scale drifts during training). A cluster of up to `BRUTE_MAX` rows
gets a float64 distance matrix; larger sets find neighbours with FAISS (`knn_search`) and
recompute their distances exactly in float64, avoiding the float32 cancellation of 2 - 2 cos.
The authors' code averages squared distances (faiss IndexFlatL2); this follows the paper.

Here the loop asks once per class, so the population clustered is the class's candidates
plus the class's members of the current subset (its labelled set L_c), into |L_c| + k
clusters. As in the authors' implementation, typicality is computed among a cluster's
not-yet-labelled members (labelled ones and earlier picks are removed), and the cluster
count is capped (`max_clusters`, 500 there) to keep k-means affordable late in a run.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import numpy as np
import torch

from flexsample.engine.context import ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.options import opt
from flexsample.engine.registries import register_estimator

from .density import DEFAULT_IVF_THRESHOLD, _check_knn, knn_search, l2_normalize
from .params import IVFThreshold, Knn

DEFAULT_KNN = 20  # the paper's K
DEFAULT_MAX_CLUSTERS = 500  # the authors' cap on |L| + B
MINIBATCH_ABOVE = 2_000_000  # points x clusters above which MiniBatchKMeans replaces KMeans
_EPS = 1e-8  # keeps the typicality of exact duplicates finite
_CHUNK = 256  # rows per exact-distance block (rows x knn x dim float64)
BRUTE_MAX = 2048  # rows up to which a NumPy distance matrix beats a FAISS index (small clusters)


def mean_knn_distance(
    features: np.ndarray,
    knn: int = DEFAULT_KNN,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean Euclidean distance of each L2-normalised row to its min(knn, n - 1) nearest
    other rows; NaN for a row with no other row. float64, shape (n,).

    Up to `BRUTE_MAX` rows (the usual cluster) a float64 distance matrix is cheapest: a FAISS
    index costs its thread start-up per call. Above, FAISS finds the neighbours.
    """
    x = l2_normalize(features)
    n = len(x)
    k = min(int(knn), n - 1)
    if k <= 0:
        return np.full(n, np.nan)
    if n <= BRUTE_MAX:
        x64 = x.astype(np.float64)
        sq = np.einsum("nd,nd->n", x64, x64)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x64 @ x64.T)
        np.fill_diagonal(d2, np.inf)  # not itself (its duplicates still count)
        d2 = np.partition(d2, k - 1, axis=1)[:, :k]
        return np.sqrt(np.maximum(d2, 0.0)).mean(axis=1)
    _, ids = knn_search(x, x, k + 1, ivf_threshold, device)
    rows = np.arange(n)
    drop = ids == rows[:, None]
    drop[~drop.any(axis=1), -1] = True  # duplicates pushed itself out: drop the farthest
    drop &= np.cumsum(drop, axis=1) == 1  # exactly one dropped entry per row
    keep = (ids >= 0) & ~drop  # IVF may return fewer than asked (-1 ids)
    nbr = np.where(keep, ids, 0)
    x64 = x.astype(np.float64)
    total = np.empty(n)
    for s in range(0, n, _CHUNK):
        blk = slice(s, s + _CHUNK)
        d = np.linalg.norm(x64[blk, None, :] - x64[nbr[blk]], axis=2)
        total[blk] = np.where(keep[blk], d, 0.0).sum(axis=1)
    count = keep.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def typicality(
    features: np.ndarray,
    knn: int = DEFAULT_KNN,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """TypiClust's typicality of every row among `features`: 1 / (mean distance to its
    min(knn, n - 1) nearest other rows + 1e-8). A lone row (n = 1) has no neighbours and
    typicality 0: nothing supports it as typical."""
    dist = mean_knn_distance(features, knn, ivf_threshold, device)
    out = np.zeros(len(dist))
    ok = ~np.isnan(dist)
    out[ok] = 1.0 / (dist[ok] + _EPS)
    return out


def kmeans_labels(features: np.ndarray, n_clusters: int, random_state: int) -> np.ndarray:
    """Cluster ids (n,) from k-means (KMeans; MiniBatchKMeans for large problems), seeded.

    Duplicated points can leave clusters empty; sklearn's warning about it is silenced
    (an empty cluster is simply never chosen). BLAS runs single-threaded, as sklearn's own
    Lloyd loop does (it parallelises with OpenMP instead): k-means++ seeding makes hundreds
    of small products, for which waking BLAS threads costs more than the product.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    n_clusters = max(1, min(int(n_clusters), len(features)))
    if n_clusters == 1:
        return np.zeros(len(features), dtype=np.int64)
    if len(features) * n_clusters <= MINIBATCH_ABOVE:
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=random_state)
    else:
        km = MiniBatchKMeans(
            n_clusters=n_clusters, batch_size=4096, n_init=1, random_state=random_state
        )
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit_predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


def typiclust_picks(
    features: np.ndarray,
    labelled: np.ndarray,
    k: int,
    *,
    knn: int = DEFAULT_KNN,
    max_clusters: int = DEFAULT_MAX_CLUSTERS,
    random_state: int = 0,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Row positions of k TypiClust picks among the unlabelled rows, in pick order.

    `labelled` is a boolean mask over the rows. The rows are clustered into
    min(#labelled + k, max_clusters, n) k-means clusters; each pick takes the cluster with
    the fewest labelled members (earlier picks count), the largest first among equals, the
    lowest cluster id among equal sizes, and from it the unlabelled member of highest
    typicality among the cluster's unlabelled members (the lowest row on ties).
    """
    labelled = np.asarray(labelled, dtype=bool)
    n = len(labelled)
    free = ~labelled
    if not 0 <= k <= int(free.sum()):
        raise ValueError(f"cannot pick {k} of {int(free.sum())} unlabelled rows")
    x = l2_normalize(features)
    n_clusters = min(int(labelled.sum()) + int(k), int(max_clusters), n)
    assign = kmeans_labels(x, n_clusters, random_state)
    n_clusters = int(assign.max(initial=-1)) + 1
    sizes = np.bincount(assign, minlength=n_clusters)
    counts = np.bincount(assign[labelled], minlength=n_clusters)
    picks = np.empty(int(k), dtype=np.int64)
    for i in range(int(k)):
        has_free = np.bincount(assign[free], minlength=n_clusters) > 0
        ids = np.flatnonzero(has_free)
        # fewest labelled, then largest, then lowest id: lexsort's last key is the primary one
        c = ids[np.lexsort((ids, -sizes[ids], counts[ids]))[0]]
        members = np.flatnonzero((assign == c) & free)
        typ = typicality(x[members], knn, ivf_threshold, device)
        pick = members[int(np.argmax(typ))]  # argmax: the first (lowest row) on ties
        picks[i] = pick
        free[pick] = False
        counts[c] += 1
    return picks


def _check_max_clusters(max_clusters: int) -> None:
    if (
        isinstance(max_clusters, bool)
        or not isinstance(max_clusters, int | np.integer)
        or max_clusters < 1
    ):
        raise FlexsampleError(f"max_clusters must be an integer >= 1, got {max_clusters!r}")


@register_estimator("typiclust")
class TypiClustEstimator(Estimator):
    """TypiClust (Hacohen et al. 2022): the most typical sample of each uncovered k-means cluster.

    `select` clusters each class's candidates plus its subset members into |L_c| + k
    clusters (at most `max_clusters`) and takes, cluster by cluster (fewest labelled, then
    largest), the candidate of highest typicality = 1 / mean distance to its `knn` nearest
    neighbours (default 20) within the cluster. `score` is the typicality of each candidate
    among its own class's candidates (for combinations and reports).
    """

    needs = frozenset({"features", "labels"})

    def __init__(
        self,
        knn: Knn = DEFAULT_KNN,
        max_clusters: Annotated[
            int, opt("cap on the number of clusters (|L| + B)", ge=1, le=1_000_000)
        ] = DEFAULT_MAX_CLUSTERS,
        ivf_threshold: IVFThreshold = DEFAULT_IVF_THRESHOLD,
    ) -> None:
        _check_knn(knn, ivf_threshold)
        _check_max_clusters(max_clusters)
        self.knn = int(knn)
        self.max_clusters = int(max_clusters)
        self.ivf_threshold = int(ivf_threshold)

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        labels = ctx.labels[candidates]
        out = np.zeros(len(candidates))
        for c in np.unique(labels):
            pos = np.flatnonzero(labels == c)
            pos = pos[np.argsort(candidates[pos], kind="stable")]  # ascending global index
            out[pos] = typicality(
                ctx.features(candidates[pos]), self.knn, self.ivf_threshold, ctx.device
            )
        return out

    def select(self, ctx: ScoringContext, candidates: np.ndarray, k: int) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        labels = ctx.labels
        sub = np.asarray(ctx.subset_indices, dtype=np.int64)
        mine = sub[np.isin(labels[sub], np.unique(labels[candidates]))]
        mine = np.setdiff1d(mine, candidates)
        rows = np.concatenate([candidates, mine])
        order = np.argsort(rows, kind="stable")  # ascending global index: ties -> lowest
        rows = rows[order]
        labelled = (np.arange(len(order)) >= len(candidates))[order]
        seed = int(np.random.SeedSequence([ctx.seed, ctx.step, 0x7C1]).generate_state(1)[0])
        picks = typiclust_picks(
            ctx.features(rows),
            labelled,
            int(k),
            knn=self.knn,
            max_clusters=self.max_clusters,
            random_state=seed,
            ivf_threshold=self.ivf_threshold,
            device=ctx.device,
        )
        return rows[picks]
