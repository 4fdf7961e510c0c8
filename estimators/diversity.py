"""Batch-diversity selectors: core-set (k-center greedy) and BADGE (k-means++ on gradients).

Both pick a whole batch (`select`) instead of the top-k scores, so the batch covers the
feature space rather than piling up in one uncertain corner.

Core-set arithmetic: a squared distance is the float32 sum NumPy computes,
``np.sum(np.square(x - c), axis=-1)``, the arithmetic of a plain NumPy k-center greedy on
float32 features, so our centers are *identical* to that greedy's, near-ties included
(ties: lowest index). Faster kernels (FAISS, a float32 GEMM) only narrow down which
(point, center) pairs can matter, with a rigorous rounding bound; every distance that
decides anything is then computed the plain way.
"""

from __future__ import annotations

from typing import Annotated, Literal

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from flexsample.engine.context import ScoringContext, _available_ram
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.options import opt
from flexsample.engine.registry import register_estimator

from .density import _GPU_RESOURCES, faiss_gpu_count

_UNIT = 2.0**-24  # float32 unit roundoff
_CHUNK = 8192  # rows per chunk of a full distance pass (keeps temporaries in cache)
_LAZY_MIN_DIM = 16  # below this many features, plain full passes beat the lazy greedy


# -- core-set -------------------------------------------------------------------------------
def sq_distances(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Squared distances of float32 rows to one center (or pairwise rows), NumPy's float32 sum."""
    return np.sum(np.square(points - center), axis=-1)


def _sq_distances_chunked(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    out = np.empty(len(points), dtype=np.float32)
    for lo in range(0, len(points), _CHUNK):
        out[lo : lo + _CHUNK] = sq_distances(points[lo : lo + _CHUNK], center)
    return out


def _nearest_device(ctx: ScoringContext) -> tuple[int | None, torch.device | None]:
    """(faiss GPU id, torch CUDA device) for the nearest-center search: at most one is set."""
    if ctx.device.type != "cuda":
        return None, None
    if faiss_gpu_count() > 0:
        return ctx.device.index or 0, None
    return None, ctx.device


def nearest_centers(
    points: np.ndarray,
    centers: np.ndarray,
    gpu: int | None = None,
    device: torch.device | None = None,
) -> np.ndarray:
    """Index of each point's nearest center, by ||c||^2 - 2 x.c: a guess on near-ties.

    A FAISS flat L2 index on GPU `gpu`; else a chunked torch matmul on CUDA `device` (faiss
    without GPU support); else a chunked float32 NumPy GEMM, which on this kind of machine
    ran 4x faster than FAISS's CPU flat search (whose bundled BLAS is older and generic).
    Callers only use it as a starting bound; rounding here never changes a selection.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    if gpu is not None:
        res = _GPU_RESOURCES.get(gpu)
        if res is None:
            res = _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, gpu, faiss.IndexFlatL2(centers.shape[1]))
        index.add(centers)
        _, ids = index.search(points, 1)
        return ids[:, 0].astype(np.int64)
    rows = max(1, (1 << 24) // max(1, len(centers)))  # a (rows x centers) block <= 64 MiB
    out = np.empty(len(points), dtype=np.int64)
    if device is not None:
        c = torch.from_numpy(centers).to(device)
        nc = (c * c).sum(dim=1)
        for lo in range(0, len(points), rows):
            q = torch.from_numpy(points[lo : lo + rows]).to(device)
            out[lo : lo + rows] = torch.argmin(nc - 2.0 * (q @ c.T), dim=1).cpu().numpy()
        return out
    nc = np.einsum("ij,ij->i", centers, centers)
    for lo in range(0, len(points), rows):
        out[lo : lo + rows] = np.argmin(nc - 2.0 * (points[lo : lo + rows] @ centers.T), axis=1)
    return out


class _KCenter:
    """Lazy exact k-center greedy state.

    `u[i]` is the plain float32 distance from point i to *some* center; it is the exact
    minimum over `centers[:t[i]]` too. Distances only shrink as centers are added, so `u`
    is an upper bound of the current minimum: each step refreshes only the points whose
    bound is at the top (screened by a GEMM, confirmed the plain way) until the best
    refreshed value beats every bound left -- the same pick as a full update, at a small
    fraction of the work (no (point, center) distance is computed the plain way twice).
    """

    def __init__(self, points: np.ndarray, centers: np.ndarray, capacity: int) -> None:
        self.x = np.ascontiguousarray(points, dtype=np.float32)
        n, d = self.x.shape
        self.nx = np.einsum("ij,ij->i", self.x, self.x).astype(np.float64)
        self.c = np.empty((len(centers) + capacity, d), dtype=np.float32)
        self.nc = np.empty(len(self.c), dtype=np.float64)
        self.num_centers = 0
        self.u = np.full(n, np.inf, dtype=np.float32)
        self.t = np.zeros(n, dtype=np.int64)
        # rounding slack of the screen: GEMM and norms vs the plain float32 sum (`_screen_block`)
        self.slack = 8.0 * (d + 3) * _UNIT / (1.0 - (d + 3) * _UNIT)
        for row in centers:
            self.add_center(row)

    def add_center(self, row: np.ndarray) -> None:
        j = self.num_centers
        self.c[j] = row
        self.nc[j] = float(np.dot(self.c[j], self.c[j]))
        self.num_centers += 1

    def _screen(self, rows: np.ndarray, start: int) -> None:
        """Bring `rows` (all with t >= start) up to date with centers[start:]."""
        end = self.num_centers
        step = max(1, (1 << 22) // max(1, end - start))  # a (rows x centers) block <= 32 MiB
        for lo in range(0, len(rows), step):
            self._screen_block(rows[lo : lo + step], start, end)
        self.t[rows] = end

    def _screen_block(self, rows: np.ndarray, start: int, end: int) -> None:
        cs = self.c[start:end]
        # true v = ||x-c||^2 vs the GEMM form a (float32 dot and norms): |a - v| <= 2g(|x|^2+|c|^2);
        # vs the plain float32 sum s: |s - v| <= g v <= 2g(|x|^2+|c|^2); g = gamma_(D+3), the
        # worst case of any summation order. So |s - a| <= 4g(...); `slack` = 8g keeps a 2x
        # margin, and a pair is skipped only when it certainly cannot be the row's minimum
        a = (self.x[rows] @ cs.T).astype(np.float64)
        a *= -2.0
        a += self.nx[rows, None]
        a += self.nc[None, start:end]
        margin = self.slack * (self.nx[rows, None] + self.nc[None, start:end])
        seen = np.arange(start, end)[None, :] < self.t[rows, None]  # pairs already counted
        high = np.where(seen, np.inf, a + margin)  # >= the plain value of each new pair
        cap = np.minimum(self.u[rows], high.min(axis=1))  # >= the row's new minimum
        a -= margin  # <= the plain value: a pair whose low end passes `cap` cannot be the min
        keep = (a <= cap[:, None]) & ~seen
        r, j = np.nonzero(keep)
        if len(r):
            exact = sq_distances(self.x[rows[r]], self.c[start + j])
            np.minimum.at(self.u, rows[r], exact)

    def refresh(self, rows: np.ndarray) -> None:
        rows = rows[self.t[rows] < self.num_centers]
        if not len(rows):
            return
        t = self.t[rows]
        fresh = t == 0  # bound from `nearest_centers` only: screen against every center
        if fresh.any():
            self._screen(rows[fresh], 0)
        if (~fresh).any():
            self._screen(rows[~fresh], int(t[~fresh].min()))

    def farthest(self, remaining: int, block: int) -> int:
        """The point farthest from its nearest center (lowest index on ties).

        Every point is stale when a step starts. The `block` largest bounds are refreshed
        first; then, until none is left, every stale point whose bound reaches the best
        exact value so far: only those could still beat it (bounds never undershoot).
        """
        n = len(self.u)
        if block >= remaining:
            rows = np.flatnonzero(self.u >= 0)  # every point not yet a center
        else:
            rows = np.flatnonzero(self.u >= np.partition(self.u, n - block)[n - block])
        self.refresh(rows)
        vals = self.u[rows]
        best = vals.max()
        pick = int(rows[np.flatnonzero(vals == best)[0]])
        while True:
            rows = np.flatnonzero((self.u >= best) & (self.t < self.num_centers))
            if not len(rows):
                return pick
            self.refresh(rows)
            vals = self.u[rows]
            top = vals.max()
            if top >= best:
                first = int(rows[np.flatnonzero(vals == top)[0]])
                pick = first if top > best else min(pick, first)
                best = top


def kcenter_greedy(
    points: np.ndarray,
    k: int,
    centers: np.ndarray | None = None,
    first: int | None = None,
    gpu: int | None = None,
    device: torch.device | None = None,
) -> np.ndarray:
    """k-center greedy (Sener & Savarese 2018): k row indices of `points`, in pick order.

    Each pick is the point farthest from its nearest center (ties: lowest index); picks
    become centers. `centers` (already labelled rows) start the cover; without any, the
    first pick is row `first`. Distances as a plain NumPy float32 greedy computes them
    (module docstring): the same picks, found lazily (`_KCenter`). Each point's first
    bound is its distance to the center `nearest_centers` names (FAISS on GPU `gpu`, torch
    on CUDA `device`, else NumPy).
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    k = int(k)
    if not 0 <= k <= n:
        raise FlexsampleError(f"k-center greedy: k must be in [0, {n}], got {k}")
    centers = np.zeros((0, points.shape[1]), np.float32) if centers is None else centers
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    state = _KCenter(points, centers, k)
    picks: list[int] = []
    if len(centers):
        near = nearest_centers(points, centers, gpu, device)
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            state.u[sl] = sq_distances(points[sl], centers[near[sl]])
    else:
        if first is None or not 0 <= int(first) < n:
            raise FlexsampleError(
                f"k-center greedy without centers needs a first row in [0, {n}), got {first}"
            )
        first = int(first)
        state.add_center(points[first])
        state.u[:] = _sq_distances_chunked(points, points[first])
        state.t[:] = 1
        state.u[first] = -np.inf
        picks.append(first)
    if points.shape[1] < _LAZY_MIN_DIM:  # a full pass costs less than the lazy bookkeeping
        state.refresh(np.flatnonzero(state.u >= 0))  # exact minima over the starting centers
        u = state.u
        while len(picks) < k:
            i = int(np.argmax(u))
            picks.append(i)
            u = np.minimum(u, sq_distances(points, points[i]))
            u[picks] = -np.inf
        return np.asarray(picks, dtype=np.int64)
    # the screens are small GEMMs: a second BLAS thread only adds hand-off latency (tens of
    # ms per call when the cores are busy), so they run on one
    with threadpool_limits(1, user_api="blas"):
        while len(picks) < k:
            i = state.farthest(n - len(picks), 16)
            picks.append(i)
            state.add_center(points[i])
            state.u[i] = -np.inf
    return np.asarray(picks, dtype=np.int64)


@register_estimator("coreset")
class CoresetEstimator(Estimator):
    """Core-set: k-center greedy on the classifier's features, covering the subset's gaps.

    `select` picks, one at a time, the candidate farthest (Euclidean, raw pooled features)
    from its nearest center; the already-selected subset is the set of starting centers
    (all classes), each pick becomes one. With an empty subset the first pick is drawn by
    a generator seeded by (seed, step). Centers equal a plain NumPy float32 k-center greedy's
    (lowest index on ties), 5x+ faster (lazy exact updates). `score` is the distance to the
    nearest subset member (`nearest_centers`, distance recomputed the plain way; 0 without a
    subset).
    """

    needs = frozenset({"features"})

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        subset = np.asarray(ctx.subset_indices, dtype=np.int64)
        if not len(subset) or not len(candidates):
            return np.zeros(len(candidates), dtype=np.float64)
        x, s = ctx.features(candidates), ctx.features(subset)
        near = nearest_centers(x, s, *_nearest_device(ctx))
        d = np.empty(len(x), dtype=np.float32)
        for lo in range(0, len(x), _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            d[sl] = sq_distances(x[sl], s[near[sl]])
        return np.sqrt(np.maximum(d, 0.0), dtype=np.float64)

    def select(self, ctx: ScoringContext, candidates: np.ndarray, k: int) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        subset = np.asarray(ctx.subset_indices, dtype=np.int64)
        x = ctx.features(candidates)
        centers = ctx.features(subset) if len(subset) else None
        first = None if len(subset) else int(ctx.rng.integers(len(candidates)))
        picks = kcenter_greedy(x, k, centers, first, *_nearest_device(ctx))
        return candidates[picks]


# -- BADGE ----------------------------------------------------------------------------------
def gradient_embedding(features: np.ndarray, probs: np.ndarray, bias: bool) -> np.ndarray:
    """Last-layer gradient embeddings (n, C*D [+ C]) float32, no backward pass.

    For h (D) and p (C), the CE loss at the predicted label y = argmax p has gradient
    (p - onehot(y)) outer h w.r.t. the (C, D) head weight, flattened row-major like
    `head.weight`; with a bias, its gradient p - onehot(y) follows as C more columns.
    """
    h = np.asarray(features, dtype=np.float32)
    a = np.array(probs, dtype=np.float32, copy=True)
    n, c = a.shape
    d = h.shape[1]
    a[np.arange(n), np.argmax(a, axis=1)] -= 1.0
    out = np.empty((n, c * d + (c if bias else 0)), dtype=np.float32)
    np.multiply(a[:, :, None], h[:, None, :], out=out[:, : c * d].reshape(n, c, d))
    if bias:
        out[:, c * d :] = a
    return out


def gradient_norms(features: np.ndarray, probs: np.ndarray, bias: bool) -> np.ndarray:
    """Norms of `gradient_embedding` rows, |p - onehot| * sqrt(|h|^2 [+ 1]), in float64."""
    a = np.array(probs, dtype=np.float64, copy=True)
    a[np.arange(len(a)), np.argmax(a, axis=1)] -= 1.0
    h2 = np.square(np.asarray(features, dtype=np.float64)).sum(axis=1) + (1.0 if bias else 0.0)
    return np.sqrt(np.square(a).sum(axis=1) * h2)


def badge_seed(seed: int, step: int, cls: int | None = None) -> int:
    """The seeding's random_state for a query step (and class): an int in [0, 2**32) that is a
    pure function of (seed, step, class)."""
    key = [int(seed), int(step), 0xBAD6E] + ([] if cls is None else [int(cls)])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


BadgeSeeding = Literal["authors", "greedy"]
_TIE = 1e-6  # greedy: trial potentials this close (relative) to the best are redone in float64


class _Factors:
    """Rows e_i = a_i (x) g_i (flattened), kept as their factors on one device.

    BADGE's gradient embedding of sample i is (p_i - onehot) outer h_i: with a (n, C) and g
    (n, D), <e_i, e_j> = (a_i . a_j)(g_i . g_j), so a squared distance costs C + D products
    instead of C * D and the (n, C * D) embedding is never built. `a = None`: plain rows g.
    Products run in float32 (GEMMs); norms, distances and sums are float64.
    """

    def __init__(self, a: torch.Tensor | None, g: torch.Tensor) -> None:
        self.a, self.g = a, g
        n = len(g)
        self.sq = torch.empty(n, dtype=torch.float64, device=g.device)
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            nrm = g[sl].double().square().sum(1)
            if a is not None:
                nrm *= a[sl].double().square().sum(1)
            self.sq[sl] = nrm

    def distances(self, ids: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Squared distances (n, len(ids)) float64 of every row to rows `ids` (0 on the rows
        themselves); `exact`: the products in float64 too."""
        g, a = (
            (self.g.double(), None if self.a is None else self.a.double())
            if exact
            else (self.g, self.a)
        )
        ip = (g @ g[ids].T).double()
        if a is not None:
            ip *= (a @ a[ids].T).double()
        d = self.sq[:, None] + self.sq[ids][None, :] - 2.0 * ip
        d.clamp_min_(0.0)
        d[ids, torch.arange(len(ids), device=d.device)] = 0.0
        return d


def _fill(f: _Factors, picks: list[int], k: int) -> np.ndarray:
    """Complete `picks` to k distinct rows with the unchosen rows of largest norm (lowest
    index on ties): what is left when every remaining row coincides with a centre."""
    norms = f.sq.cpu().numpy().copy()
    norms[picks] = -np.inf
    order = np.lexsort((np.arange(len(norms)), -norms))
    return np.concatenate([np.asarray(picks, np.int64), order[: k - len(picks)]])


def kmeanspp_seeding(
    g: torch.Tensor | np.ndarray,
    k: int,
    random_state: int,
    seeding: BadgeSeeding = "authors",
    a: torch.Tensor | np.ndarray | None = None,
    n_trials: int | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """k distinct rows by k-means++ seeding, in pick order, on `device` (default: g's).

    Rows are g's, or with `a` the outer products a_i (x) g_i (`_Factors`). The random stream
    is a NumPy `RandomState(random_state)`: its draws are made on the CPU, the distances on
    the device, so CPU and CUDA take the same stream. Each row's squared distance to its
    nearest centre is kept (float64) and lowered after each pick by one pass.

    * "authors" (JordanAsh/badge `init_centers`): the first centre is the row of largest norm
      (lowest index on ties); each next one is drawn with probability proportional to that
      squared distance (D^2 sampling), one uniform per pick: the row where the float64
      cumulative sum first exceeds u * total. Chosen rows have distance 0, so no repeats.
    * "greedy" (scikit-learn's `kmeans_plusplus`): a uniform first centre (`choice`, as
      scikit-learn draws it), then per centre `n_trials` (default 2 + int(ln k)) D^2 draws,
      of which the one leaving the smallest total squared distance wins (first trial on
      ties; trials within 1e-6 of the best are re-scored with float64 products).

    When every remaining row coincides with a centre (total distance 0) the rest are the
    unchosen rows of largest norm.
    """
    dev = (
        torch.device(device)
        if device is not None
        else (g.device if isinstance(g, torch.Tensor) else torch.device("cpu"))
    )
    g = torch.as_tensor(g, dtype=torch.float32).to(dev)
    a = None if a is None else torch.as_tensor(a, dtype=torch.float32).to(dev)
    n, k = len(g), int(k)
    if not 0 <= k <= n:
        raise FlexsampleError(f"k-means++ seeding: k must be in [0, {n}], got {k}")
    if seeding not in ("authors", "greedy"):
        raise FlexsampleError(
            f"k-means++ seeding: unknown rule {seeding!r}; accepted: authors, greedy"
        )
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rs = np.random.RandomState(int(random_state))
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        # one pass per pick is a few small ops: a second thread only adds hand-off latency
        # (tens of ms per op when the cores are busy), as for the core-set screens
        torch.set_num_threads(1)
    try:
        f = _Factors(a, g)
        if seeding == "authors":
            return _d2_authors(f, k, rs)
        trials = 2 + int(np.log(k)) if n_trials is None else int(n_trials)
        return _d2_greedy(f, k, rs, trials)
    finally:
        torch.set_num_threads(threads)


def _d2_authors(f: _Factors, k: int, rs: np.random.RandomState) -> np.ndarray:
    dev = f.g.device
    first = int(torch.argmax(f.sq))  # the first maximum: lowest index
    u = torch.from_numpy(rs.uniform(size=k - 1)).to(dev)
    picks = torch.empty(k, dtype=torch.int64, device=dev)
    totals = torch.empty(k, dtype=torch.float64, device=dev)
    picks[0] = first
    closest = f.distances(picks[:1])[:, 0]
    for t in range(1, k):
        cum = torch.cumsum(closest, 0)
        totals[t] = cum[-1]
        # the row where the cumulative sum first exceeds u * total (zero-weight rows never)
        i = torch.searchsorted(cum, (u[t - 1] * cum[-1]).reshape(1), right=True)
        i = torch.minimum(i, torch.searchsorted(cum, cum[-1:], right=False))  # u*total rounds up
        picks[t] = i[0]
        torch.minimum(closest, f.distances(i)[:, 0], out=closest)
        closest[i] = 0.0
    return _finish(f, picks, totals, k)


def _finish(f: _Factors, picks: torch.Tensor, totals: torch.Tensor, k: int) -> np.ndarray:
    got = picks.cpu().numpy().astype(np.int64)
    dead = np.flatnonzero(totals[1:].cpu().numpy() <= 0.0)  # no distance left at that pick
    if len(dead):
        got = got[: dead[0] + 1]
    _, first = np.unique(got, return_index=True)  # a repeat (a zero-weight draw) is dropped
    if len(first) < k:
        return _fill(f, got[np.sort(first)].tolist(), k)
    return got


def _d2_greedy(f: _Factors, k: int, rs: np.random.RandomState, trials: int) -> np.ndarray:
    dev = f.g.device
    n = len(f.g)
    w = np.ones(n, dtype=np.float32)  # scikit-learn's unit sample weights, its first draw
    first = int(rs.choice(n, p=w / w.sum()))
    u = torch.from_numpy(rs.uniform(size=(k - 1, trials))).to(dev)
    picks = torch.empty(k, dtype=torch.int64, device=dev)
    totals = torch.empty(k, dtype=torch.float64, device=dev)
    picks[0] = first
    closest = f.distances(picks[:1])[:, 0]
    for t in range(1, k):
        cum = torch.cumsum(closest, 0)
        totals[t] = cum[-1]
        ids = torch.searchsorted(cum, u[t - 1] * cum[-1], right=False)
        ids.clamp_(max=n - 1)  # as scikit-learn: rounding can overshoot the last row
        cand = torch.minimum(closest[:, None], f.distances(ids))
        pot = cand.sum(0)
        best = torch.argmin(pot)  # first trial on ties
        near = pot <= pot[best] * (1.0 + _TIE)
        if dev.type == "cpu" and int(near.sum()) > 1:  # float64 where a near-tie decides
            # (on CUDA this check would synchronise every pick; the float32 products decide)
            redo = torch.minimum(closest[:, None], f.distances(ids[near], exact=True)).sum(0)
            pot = torch.full_like(pot, torch.inf)
            pot[near] = redo
            best = torch.argmin(pot)
        picks[t] = ids[best]
        closest = cand[:, best].clone()
        closest[ids[best]] = 0.0
    return _finish(f, picks, totals, k)


def kmeanspp_distinct(embedding: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """k distinct rows chosen by scikit-learn's k-means++ seeding, in seeding order.

    k-means++ repeats a row only when every remaining row coincides with a seed (all
    distances zero); such repeats are replaced by the unchosen rows of largest norm
    (lowest index on ties), so the batch still has k members.
    """
    from sklearn.cluster import kmeans_plusplus  # sklearn loads only for BADGE

    _, ids = kmeans_plusplus(embedding, n_clusters=int(k), random_state=int(random_state))
    ids = np.asarray(ids, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    picks = ids[np.sort(first)]
    if len(picks) < k:
        norms = np.einsum("ij,ij->i", embedding, embedding, dtype=np.float64)
        norms[picks] = -np.inf
        order = np.lexsort((np.arange(len(norms)), -norms))
        picks = np.concatenate([picks, order[: k - len(picks)]])
    return picks


@register_estimator("badge")
class BadgeEstimator(Estimator):
    """BADGE: k-means++ seeding on last-layer gradient embeddings (uncertain and diverse).

    Each candidate's embedding is the gradient of the CE loss at its predicted label w.r.t.
    the head weight (`gradient_embedding`; with `badge_bias`, the bias gradient's C columns
    too): big for uncertain samples, pointing where the sample would move the classifier.
    `select` seeds k-means++ on them (`kmeanspp_seeding`) on the context's device, from a
    stream seeded by (seed, step, class) (`badge_seed`):

    * `badge_seeding="authors"` (default): the authors' `init_centers` (JordanAsh/badge):
      the largest-gradient-norm candidate first, then plain D^2 sampling; with
      `badge_bias=False` (default) on the weight gradient only, as the authors embed;
    * `badge_seeding="greedy"`: scikit-learn's `kmeans_plusplus` (a uniform first centre,
      2 + ln k D^2 trials per centre, the one lowering the total distance most). With
      `badge_bias=True` this is flexsample's BADGE before the authors' rule became the default.

    The embedding is never built: distances come from its factors (C + D numbers a
    candidate). Memory: n x (C + D + 1) float32 and a few n float64 vectors per class; above
    `badge_memory` bytes (default: half the available RAM) it stops with an error. `score`
    is the embedding norm.
    """

    needs = frozenset({"features", "probs", "labels"})

    def __init__(
        self,
        badge_memory: Annotated[
            int | None,
            opt("bytes the gradient embeddings may take (default: a share of free memory)", gt=0),
        ] = None,
        badge_seeding: Annotated[
            BadgeSeeding,
            opt(
                "k-means++ seeding: authors (largest gradient, then D^2 sampling, as "
                "JordanAsh/badge) or greedy (scikit-learn's kmeans_plusplus)"
            ),
        ] = "authors",
        badge_bias: Annotated[
            bool,
            opt("append the head bias's gradient columns to the embedding (the authors do not)"),
        ] = False,
    ) -> None:
        if badge_memory is not None and (
            isinstance(badge_memory, bool)
            or not isinstance(badge_memory, int | np.integer)
            or badge_memory <= 0
        ):
            raise FlexsampleError(
                f"badge_memory must be a number of bytes > 0, got {badge_memory!r}"
            )
        if badge_seeding not in ("authors", "greedy"):
            raise FlexsampleError(f"badge_seeding must be authors or greedy, got {badge_seeding!r}")
        self.badge_memory = None if badge_memory is None else int(badge_memory)
        self.badge_seeding = badge_seeding
        self.badge_bias = bool(badge_bias)

    def _bias(self, ctx: ScoringContext) -> bool:
        return self.badge_bias and ctx.model.head.bias is not None

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        return gradient_norms(ctx.features(candidates), ctx.probs(candidates), self._bias(ctx))

    def select(self, ctx: ScoringContext, candidates: np.ndarray, k: int) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        head = ctx.model.head
        bias = self._bias(ctx)
        c, d = int(head.out_features), int(head.in_features)
        trials = 2 + int(np.log(max(1, k))) if self.badge_seeding == "greedy" else 1
        per = (c + d + 1) * 4 + (3 + 2 * trials) * 8  # factors, norms, distances, work
        need = len(candidates) * per
        budget = self.badge_memory if self.badge_memory is not None else _available_ram() // 2
        if need > budget:
            raise FlexsampleError(
                f"badge: the gradient embeddings of {len(candidates)} candidates ({c} classes x "
                f"{d} features, kept as factors) need {need / 2**30:.2f} GiB, more than the "
                f"memory budget of {budget / 2**30:.2f} GiB (badge_memory, default half the "
                f"available RAM); accepted: at most {budget // per} candidates per class at "
                "this size"
            )
        h = torch.from_numpy(np.ascontiguousarray(ctx.features(candidates), np.float32))
        p = torch.from_numpy(np.array(ctx.probs(candidates), dtype=np.float32))
        a = p.clone()
        a[torch.arange(len(a)), torch.argmax(p, 1)] -= 1.0  # p - onehot(predicted)
        if bias:  # [h, 1]: the bias gradient's columns are a itself
            h = torch.cat([h, torch.ones(len(h), 1)], 1)
        labels = np.unique(ctx.labels[candidates])
        cls = int(labels[0]) if len(labels) == 1 else None
        state = badge_seed(ctx.seed, ctx.step, cls)
        picks = kmeanspp_seeding(h, k, state, self.badge_seeding, a=a, device=ctx.device)
        return candidates[picks]
