"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active learning on a budget").

Low-budget active learning should label *typical* samples, not uncertain ones, while staying
diverse: cluster the data into |L| + B clusters (L: labelled, B: budget), then repeatedly take
the largest cluster holding the fewest labelled samples and label its most typical member.

Typicality(x) = 1 / (mean distance from x to its K nearest neighbours), on L2-normalised
features, as the authors' code loads its features (and a classifier's feature scale drifts
during training). A cluster of up to `BRUTE_MAX` rows gets a float64 distance matrix; larger
sets find neighbours with FAISS (`knn_search`) and recompute their distances exactly in
float64, avoiding the float32 cancellation of 2 - 2 cos.

The defaults follow the authors' code (avihu111/TypiClust, `deep-al/pycls/al/typiclust.py`,
`TypiClust.select_samples`), where it departs from the paper's text; each departure is an
option, and the paper-text variant (this estimator's rule before) is `min_cluster_size=0,
knn_rule="all", order="greedy", distance="euclidean"` (`PAPER_TEXT`):

- `min_cluster_size` (5): clusters of that many points or fewer (labelled ones included) are
  dropped (`MIN_CLUSTER_SIZE`); they are only visited here once every larger cluster has run
  out of unlabelled points (the authors' code would fail there);
- `knn_rule` "half": K = min(`knn`, m // 2) on a cluster of m unlabelled points (`K_NN` = 20);
  "all": K = min(`knn`, m - 1);
- `order` "static": the kept clusters are ranked once (fewest labelled, then largest, then the
  lowest id) and visited in that order, pick i from the (i mod #clusters)-th, skipping any
  with no unlabelled point left; "greedy": re-ranked before each pick, earlier picks counting
  as labelled;
- `distance` "squared": the mean of the squared distances (faiss `IndexFlatL2`, as there);
  "euclidean": of the distances (the paper's formula).

Here the loop asks once per class, so the population clustered is the class's candidates
plus the class's members of the current subset (its labelled set L_c), into |L_c| + k
clusters. As in the authors' implementation, typicality is computed among a cluster's
not-yet-labelled members (labelled ones and earlier picks are removed), and the cluster
count is capped (`max_clusters`, 500 there) to keep k-means affordable late in a run.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import numpy as np
import torch

from flexsample.engine.context import ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.options import opt
from flexsample.engine.registry import register_estimator

from .density import DEFAULT_IVF_THRESHOLD, _check_knn, knn_search, l2_normalize
from .params import IVFThreshold, Knn

DEFAULT_KNN = 20  # the paper's K
DEFAULT_MAX_CLUSTERS = 500  # the authors' cap on |L| + B
DEFAULT_MIN_CLUSTER_SIZE = 5  # the authors' MIN_CLUSTER_SIZE: clusters of <= 5 points dropped
KnnRule = Literal["half", "all"]
ClusterOrder = Literal["static", "greedy"]
Distance = Literal["squared", "euclidean"]
# the rule as the paper's text states it (and as this estimator ran before it followed the code)
PAPER_TEXT: dict[str, object] = {
    "min_cluster_size": 0,
    "knn_rule": "all",
    "order": "greedy",
    "distance": "euclidean",
}
MINIBATCH_ABOVE = 2_000_000  # points x clusters above which MiniBatchKMeans replaces KMeans
_EPS = 1e-8  # keeps the typicality of exact duplicates finite
_CHUNK = 256  # rows per exact-distance block (rows x knn x dim float64)
BRUTE_MAX = 2048  # rows up to which a NumPy distance matrix beats a FAISS index (small clusters)


def mean_knn_distance(
    features: np.ndarray,
    knn: int = DEFAULT_KNN,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
    squared: bool = False,
) -> np.ndarray:
    """Mean Euclidean distance (`squared`: squared distance) of each L2-normalised row to its
    min(knn, n - 1) nearest other rows; NaN for a row with no other row. float64, shape (n,).

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
        d2 = np.maximum(np.partition(d2, k - 1, axis=1)[:, :k], 0.0)
        return (d2 if squared else np.sqrt(d2)).mean(axis=1)
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
        if squared:
            d = d * d
        total[blk] = np.where(keep[blk], d, 0.0).sum(axis=1)
    count = keep.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def typicality(
    features: np.ndarray,
    knn: int = DEFAULT_KNN,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
    squared: bool = False,
) -> np.ndarray:
    """TypiClust's typicality of every row among `features`: 1 / (mean distance, `squared`:
    squared distance, to its min(knn, n - 1) nearest other rows + 1e-8). A row without
    neighbours (n = 1, or knn = 0) has typicality 0: nothing supports it as typical."""
    dist = mean_knn_distance(features, knn, ivf_threshold, device, squared)
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


def neighbours(knn: int, m: int, knn_rule: KnnRule = "half") -> int:
    """K for typicality among m points: min(knn, m // 2) ("half", the authors' code) or
    min(knn, m - 1) ("all"); 0 means no neighbours (typicality 0)."""
    if knn_rule == "half":
        return min(int(knn), int(m) // 2)
    if knn_rule == "all":
        return max(min(int(knn), int(m) - 1), 0)
    raise ValueError(f"knn_rule must be 'half' or 'all', got {knn_rule!r}")


def typiclust_picks(
    features: np.ndarray,
    labelled: np.ndarray,
    k: int,
    *,
    knn: int = DEFAULT_KNN,
    max_clusters: int = DEFAULT_MAX_CLUSTERS,
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE,
    knn_rule: KnnRule = "half",
    order: ClusterOrder = "static",
    distance: Distance = "squared",
    random_state: int = 0,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Row positions of k TypiClust picks among the unlabelled rows, in pick order.

    `labelled` is a boolean mask over the rows. The rows are clustered into
    min(#labelled + k, max_clusters, n) k-means clusters. Clusters of more than
    `min_cluster_size` rows are *kept*; the others are visited only when no kept cluster has
    an unlabelled row left. Clusters are ranked by (fewest labelled, largest, lowest id):
    once (`order="static"`, visited cyclically, pick i from the (i mod #kept)-th) or before
    each pick with earlier picks counted as labelled (`"greedy"`); a cluster without
    unlabelled rows is skipped. From the cluster, the unlabelled member of highest typicality
    among the cluster's unlabelled members (K from `neighbours(knn, m, knn_rule)`, distances
    squared or not) is picked, the lowest row on ties.
    """
    labelled = np.asarray(labelled, dtype=bool)
    n = len(labelled)
    free = ~labelled
    if not 0 <= k <= int(free.sum()):
        raise ValueError(f"cannot pick {k} of {int(free.sum())} unlabelled rows")
    if order not in ("static", "greedy"):
        raise ValueError(f"order must be 'static' or 'greedy', got {order!r}")
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"distance must be 'squared' or 'euclidean', got {distance!r}")
    x = l2_normalize(features)
    n_clusters = min(int(labelled.sum()) + int(k), int(max_clusters), n)
    assign = kmeans_labels(x, n_clusters, random_state)
    n_clusters = int(assign.max(initial=-1)) + 1
    sizes = np.bincount(assign, minlength=n_clusters)
    counts = np.bincount(assign[labelled], minlength=n_clusters)
    free_count = np.bincount(assign[free], minlength=n_clusters)
    small = sizes <= int(min_cluster_size)  # dropped: visited only as a last resort
    ids = np.arange(n_clusters)
    # static ranking, kept clusters first: lexsort's last key is the primary one
    ranked = ids[np.lexsort((ids, -sizes, counts, small))]
    tiers = [ranked[~small[ranked]], ranked[small[ranked]]]
    cursor = [0, 0]
    picks = np.empty(int(k), dtype=np.int64)
    for i in range(int(k)):
        if order == "greedy":
            live = ids[free_count > 0]
            c = live[np.lexsort((live, -sizes[live], counts[live], small[live]))[0]]
        else:
            c = -1
            for t, tier in enumerate(tiers):
                for j in range(cursor[t], cursor[t] + len(tier)):
                    if free_count[tier[j % len(tier)]] > 0:
                        c, cursor[t] = int(tier[j % len(tier)]), j + 1
                        break
                if c >= 0:
                    break
        members = np.flatnonzero((assign == c) & free)
        kk = neighbours(knn, len(members), knn_rule)
        typ = typicality(x[members], kk, ivf_threshold, device, distance == "squared")
        pick = members[int(np.argmax(typ))]  # argmax: the first (lowest row) on ties
        picks[i] = pick
        free[pick] = False
        free_count[c] -= 1
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
    largest; clusters of `min_cluster_size` points or fewer last), the candidate of highest
    typicality = 1 / mean (squared) distance to its K nearest neighbours within the cluster.
    The defaults follow the authors' code; `PAPER_TEXT` holds the options of the paper's
    text (see the module docstring). `score` is the typicality of each candidate among its
    own class's candidates (same K rule and distance; for combinations and reports).
    """

    needs = frozenset({"features", "labels"})

    def __init__(
        self,
        knn: Knn = DEFAULT_KNN,
        max_clusters: Annotated[
            int, opt("cap on the number of clusters (|L| + B)", ge=1, le=1_000_000)
        ] = DEFAULT_MAX_CLUSTERS,
        ivf_threshold: IVFThreshold = DEFAULT_IVF_THRESHOLD,
        min_cluster_size: Annotated[
            int,
            opt(
                "clusters of this many points or fewer are visited only when no larger one "
                "has a candidate left (the authors' code: 5; 0 keeps all)",
                ge=0,
                le=1_000_000,
            ),
        ] = DEFAULT_MIN_CLUSTER_SIZE,
        knn_rule: Annotated[
            KnnRule,
            opt(
                "neighbours K among a cluster's m candidates: half = min(knn, m // 2) (the "
                "authors' code) or all = min(knn, m - 1) (the paper's text)"
            ),
        ] = "half",
        order: Annotated[
            ClusterOrder,
            opt(
                "cluster order: static = ranked once (fewest labelled, largest) and visited "
                "in turn (the authors' code) or greedy = re-ranked after each pick"
            ),
        ] = "static",
        distance: Annotated[
            Distance,
            opt(
                "typicality's distance: squared (mean squared distance, the authors' code) "
                "or euclidean (the paper's formula)"
            ),
        ] = "squared",
    ) -> None:
        _check_knn(knn, ivf_threshold)
        _check_max_clusters(max_clusters)
        if (
            isinstance(min_cluster_size, bool)
            or not isinstance(min_cluster_size, int | np.integer)
            or min_cluster_size < 0
        ):
            raise FlexsampleError(
                f"min_cluster_size must be an integer >= 0, got {min_cluster_size!r}"
            )
        for name, value, allowed in (
            ("knn_rule", knn_rule, ("half", "all")),
            ("order", order, ("static", "greedy")),
            ("distance", distance, ("squared", "euclidean")),
        ):
            if value not in allowed:
                raise FlexsampleError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.knn = int(knn)
        self.max_clusters = int(max_clusters)
        self.ivf_threshold = int(ivf_threshold)
        self.min_cluster_size = int(min_cluster_size)
        self.knn_rule: KnnRule = knn_rule
        self.order: ClusterOrder = order
        self.distance: Distance = distance

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        labels = ctx.labels[candidates]
        out = np.zeros(len(candidates))
        for c in np.unique(labels):
            pos = np.flatnonzero(labels == c)
            pos = pos[np.argsort(candidates[pos], kind="stable")]  # ascending global index
            kk = neighbours(self.knn, len(pos), self.knn_rule)
            out[pos] = typicality(
                ctx.features(candidates[pos]),
                kk,
                self.ivf_threshold,
                ctx.device,
                self.distance == "squared",
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
            min_cluster_size=self.min_cluster_size,
            knn_rule=self.knn_rule,
            order=self.order,
            distance=self.distance,
            random_state=seed,
            ivf_threshold=self.ivf_threshold,
            device=ctx.device,
        )
        return rows[picks]
