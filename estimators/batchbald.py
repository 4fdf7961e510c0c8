"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): greedy batch-aware BALD.

Top-k BALD takes near-duplicates together: each is informative alone, the second adds little
once the first is labelled. BatchBALD picks greedily the candidate n that most increases the
joint mutual information I(y_batch, y_n; w) between the batch's labels and the weights, over
the T MC draws w_1..w_T (equally weighted). The gain of n given the batch so far is

    I(y_batch, y_n; w) - I(y_batch; w) = H(y_n | y_batch) - E_w H(y_n | w)

where H(y_n | y_batch) = sum_m p(m) H(y_n | y_batch = m) over the batch's joint label
configurations m, and p(y_n | m) = sum_t p(w_t | m) p(y_n | w_t): a (M, T) x (T, N*C) matmul
of the draws' posteriors given each configuration against every candidate's draws, then one
entropy per (configuration, candidate). The first pick is the BALD arg-max.

Configurations (as batchbald_redux, the authors' reference): all C^m of them (exact joint
entropy) while C^m <= `batchbald_samples`; beyond, `batchbald_samples // T` configurations
drawn per draw w_t from p(y_batch | w_t), redrawn at every pick, and the importance-weighted
estimate with weights 1 / M (repeated configurations are merged with their counts as weights:
the same estimate, fewer rows in the passes below -- at 5 picks about 3 in 10 are distinct).
The draws come from a torch generator seeded by (seed, step),
exactly as batchbald_redux draws them from torch's global generator (same multinomial call),
so for the same seed both pick the same batch. p(m | w_t) is kept as float64 logarithms (a
product of 100 probabilities underflows float32); the matmul and entropies run in the draws'
dtype (float32 from the context), and the candidates whose float32 gain is within 1e-5
(relative) of the best are recomputed in float64 before the pick, so float32 rounding does not
decide near-ties (ties then go to the lowest index).

Memory: the draws of all N candidates of the class, N * T * C floats (float32), collected
from `ctx.iter_mc` into one preallocated tensor on the context's device; plus the joint
configuration buffers, about M * T * 40 bytes (M = `batchbald_samples`: 8 MB at 10,000 x 20),
and two work buffers for the (M, chunk * C) probabilities of a candidate chunk (16 MiB on a
CPU, 256 MiB on CUDA, or one candidate's M * C if larger). When the draws and
buffers exceed the MC memory budget (`engine.context.mc_memory_budget`) a FlexsampleError
names --mc-samples and the candidate count. Time: O(k * M * N * C * T) for a quota of k, so
keep quotas moderate (the paper uses batches of 5 to 100). The conditional entropies
E_w H(y_n | w) are computed while streaming.

Saturation: the T draws are equally weighted, so I(y_batch; w) <= H(w) = log T. Once the batch
tells the draws apart (95 % of log T within 5 picks at T = 20 and C = 8 in
`benchmarks/batchbald.py --growth`), every further gain is about zero and the picks are decided
by the sampled estimate's noise, not by information; from about 20 picks the gains of most
candidates fall within the near-tie tolerance, so the float64 recomputation makes each pick's
entropy pass cost about 2.3x. `select` says so in one warning line per run (more draws, or
power BALD, help).
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated

import numpy as np
import torch

from flexsample.engine.context import ScoringContext, mc_memory_budget
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import Estimator
from flexsample.engine.options import opt
from flexsample.engine.registry import register_estimator
from flexsample.engine.selection import acquisition_keys, top_k

from . import functional as F
from .basic import check_mc_options
from .params import MCMode, MCSamples

DEFAULT_MAX_DRAWS = 50_000  # candidates x MC draws of one class beyond which select falls back
DEFAULT_SAMPLES = 10_000  # batchbald_redux's num_samples in its examples, and --batchbald-samples
WORK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}  # work buffer size (elements) per device type
_REFINE = 1e-5  # gains this close to the best (relative) are recomputed in float64
CPU_THREADS = 1  # torch threads for the picks on a CPU (see `batchbald_batch`)
_SAMPLE_BLOCK = 1 << 22  # picks' gathered log-probabilities per block (elements) when redrawing
SATURATED = 0.95  # a batch whose information reaches this share of log T has told the draws apart


def conditional_entropy(probs: torch.Tensor) -> torch.Tensor:
    """E_w H(y_n | w): each candidate's entropy averaged over the T draws; (T, N, C) -> (N,)
    float64."""
    return F.entropy(probs).mean(0)


def exact_log_joint(log_joint: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Add one variable to every configuration: (M, T) log p(m | w_t) and the new variable's
    (T, C) log-probabilities -> (M * C, T), configuration index m * C + c."""
    m, t = log_joint.shape
    return (log_joint[:, None, :] + log_probs.t()[None, :, :]).reshape(m * log_probs.shape[1], t)


def sampled_log_joint(
    probs: torch.Tensor, per_draw: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(m | w_t) for configurations of the batch whose draws `probs` (T, b, C) are given:
    `per_draw` configurations drawn from each p(y_batch | w_s), T * per_draw in all.

    One multinomial call over rows (variable, draw) in that order, as batchbald_redux makes it,
    so the same generator state gives the same configurations. Repeated configurations are
    merged: returns (log p(m | w_t) (U, T) float64 of the U distinct ones, how many times
    each was drawn (U,) float64); a sum over the draws is the count-weighted sum over these.
    The draws run on the CPU whatever the device (the same configurations everywhere).
    """
    t, b, c = probs.shape
    rows = probs.permute(1, 0, 2).reshape(b * t, c).cpu()
    choices = torch.multinomial(rows, per_draw, replacement=True, generator=generator)
    configs = choices.view(b, t * per_draw).t()  # (M, b): the class of each variable
    configs, counts = torch.unique(configs, dim=0, return_counts=True)
    choices = configs.t().contiguous().to(probs.device)  # (b, U)
    u = choices.shape[1]
    log_probs = probs.double().clamp_min(1e-300).log().permute(1, 0, 2)  # (b, T, C)
    out = torch.zeros(t, u, dtype=torch.float64, device=probs.device)
    block = max(1, _SAMPLE_BLOCK // (t * t * per_draw))
    for lo in range(0, b, block):
        idx = choices[lo : lo + block, None, :].expand(-1, t, -1)  # (blk, T, U)
        out += torch.gather(log_probs[lo : lo + block], 2, idx).sum(0)
    return out.t().contiguous(), counts.to(device=probs.device, dtype=torch.float64)


def configuration_weights(
    log_joint: torch.Tensor, exact: bool, counts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """From log p(m | w_t) (M, T) float64: the draws' posteriors p(w_t | m) (M, T) (rows sum
    to 1), the configurations' weights (M,) and the batch's joint entropy H(y_batch).

    Exact: weights p(m) and H = -sum p(m) log p(m). Sampled: weights 1/M and the importance-
    weighted estimate H = -mean log p(m) (configurations drawn from the mixture p(m)); with
    `counts` (merged repeats) the weights are counts / sum(counts).
    Impossible configurations (p(m) = 0) get weight 0 and an all-zero row.
    """
    m, t = log_joint.shape
    log_q = torch.logsumexp(log_joint, 1) - math.log(t)  # log p(m)
    live = torch.isfinite(log_q)
    post = torch.exp(log_joint - torch.where(live, log_q, 0.0)[:, None]) / t
    post[~live] = 0.0
    if exact:
        weights = torch.where(live, log_q.exp(), 0.0)
        joint = float(-(weights * torch.where(live, log_q, 0.0)).sum())
    else:
        if counts is None:
            counts = torch.ones(m, dtype=torch.float64, device=log_joint.device)
        weights = counts / counts.sum()
        joint = float(-(weights * log_q).sum())
    return post, weights, joint


def entropy_given_batch(
    post: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor, work: int | None = None
) -> torch.Tensor:
    """H(y_n | y_batch) = sum_m weight_m H(p(y_n | m)) for every candidate, (N,) float64.

    p(y_n | m) = post (M, T) @ probs[:, n, :] (T, C), computed for a chunk of candidates at a
    time into a work buffer of about `work` elements (default: `WORK_ELEMENTS` for the device).
    """
    t, n, c = probs.shape
    m = post.shape[0]
    flat = probs.reshape(t, n * c)
    if work is None:
        work = WORK_ELEMENTS.get(probs.device.type, WORK_ELEMENTS["cuda"])
    chunk = max(1, min(n, work // (m * c)))
    buf = torch.empty(2 * m * chunk * c, dtype=probs.dtype, device=probs.device)
    tiny = torch.finfo(probs.dtype).tiny
    out = torch.empty(n, dtype=torch.float64, device=probs.device)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        width = (hi - lo) * c
        p = buf[: m * width].view(m, width)
        logp = buf[m * width : 2 * m * width].view(m, width)
        torch.matmul(post, flat[:, lo * c : hi * c], out=p)  # p(y_n = c | m)
        p.clamp_min_(tiny)  # 0 log 0 = 0; no subnormals (each costs a slow path in log, mul)
        torch.log(p, out=logp)
        p.mul_(logp)
        got = torch.mv(p.t(), weights).view(hi - lo, c).sum(1, dtype=torch.float64)
        out[lo:hi] = -got
    return out


def batchbald_batch(
    probs: torch.Tensor,
    k: int,
    num_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    cond: torch.Tensor | None = None,
    work: int | None = None,
    threads: int | None = CPU_THREADS,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy BatchBALD over MC draws `probs` (T, N, C): (k picks in pick order, the batch's
    joint mutual information I(y_1..y_i; w) after each pick, float64).

    Exact joint entropies while C^m <= `num_samples` (m: picks so far), sampled configurations
    beyond (`num_samples // T` per draw, generator seeded with `seed`). Ties go to the lowest
    index. `cond`: the conditional entropies E_w H(y_n | w), when already computed.
    `threads`: torch threads for the picks on a CPU (None: leave torch's setting).
    """
    t, n, c = probs.shape
    if not 0 <= k <= n:
        raise FlexsampleError(f"batchbald: cannot pick {k} of {n} candidates; 0 <= k <= {n}")
    if probs.device.type != "cpu" or threads is None:
        return _greedy(probs, k, num_samples, seed, cond, work)
    # each pick is a series of mid-sized ops: on a busy CPU a second thread costs more in
    # hand-offs than it adds (measured: 1.2 s vs 14.6 s per pick at 2,000 candidates, load 12)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _greedy(probs, k, num_samples, seed, cond, work)
    finally:
        torch.set_num_threads(before)


def _greedy(
    probs: torch.Tensor,
    k: int,
    num_samples: int,
    seed: int,
    cond: torch.Tensor | None,
    work: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    t, n, c = probs.shape
    dtype = probs.dtype
    floor = torch.finfo(dtype).tiny ** 0.8  # 1e-30.5 in float32
    if cond is None:
        cond = conditional_entropy(probs)
    cond = torch.as_tensor(cond, dtype=torch.float64).cpu()
    generator = torch.Generator().manual_seed(int(seed))
    per_draw = max(1, num_samples // t)
    picks: list[int] = []
    mi = np.zeros(k)
    taken = torch.zeros(n, dtype=torch.bool)
    log_joint = torch.zeros(1, t, dtype=torch.float64, device=probs.device)
    exact = True
    counts = None
    for i in range(k):
        if i and exact and c**i <= num_samples:
            last = probs[:, picks[-1], :].double().clamp_min(1e-300).log()
            log_joint = exact_log_joint(log_joint, last)
        elif i:
            exact = False
            log_joint, counts = sampled_log_joint(probs[:, picks, :], per_draw, generator)
        post, weights, joint = configuration_weights(log_joint, exact, None if exact else counts)
        # p(w_t | m) below floor -> 0: a subnormal float32 costs a slow path in every matmul
        # term it enters (draws far less likely than the best one given a long batch)
        low = torch.where(post >= floor, post, 0.0).to(dtype)
        gain = entropy_given_batch(low, weights.to(dtype), probs, work).cpu() - cond
        gain[taken] = -math.inf
        best = int(torch.argmax(gain))  # first maximum: the lowest index
        if dtype != torch.float64 and math.isfinite(gain[best]):
            # float64 only where needed: near-ties within float32 rounding are recomputed
            near = torch.nonzero(gain >= gain[best] - _REFINE * (1.0 + abs(float(gain[best]))))
            near = near[:, 0]
            if len(near) > 1:
                some = probs[:, near.to(probs.device)].double()
                gain[near] = entropy_given_batch(post, weights, some).cpu() - cond[near]
                best = int(torch.argmax(gain))
        if gain[best] == -math.inf:
            raise FlexsampleError("batchbald: every remaining candidate has a non-finite gain")
        mi[i] = joint - float(cond[picks].sum()) + float(gain[best])
        picks.append(best)
        taken[best] = True
    return np.asarray(picks, dtype=np.int64), mi


def batch_mutual_information(
    probs: torch.Tensor, batch: np.ndarray, num_samples: int | None = None, seed: int = 0
) -> float:
    """I(y_batch; w) over draws `probs` (T, N, C) for the candidates `batch`: exact when
    `num_samples` is None, else the sampled estimate with `num_samples // T` configurations per
    draw (for checks; `batchbald_batch` computes it incrementally)."""
    t, _, c = probs.shape
    batch = np.asarray(batch, dtype=np.int64)
    cond = float(conditional_entropy(probs[:, batch, :]).sum())
    if num_samples is None:
        log_joint = torch.zeros(1, t, dtype=torch.float64, device=probs.device)
        for b in batch:
            log_joint = exact_log_joint(log_joint, probs[:, b, :].double().clamp_min(1e-300).log())
        return configuration_weights(log_joint, True)[2] - cond
    generator = torch.Generator().manual_seed(int(seed))
    log_joint, counts = sampled_log_joint(probs[:, batch, :], max(1, num_samples // t), generator)
    return configuration_weights(log_joint, False, counts)[2] - cond


def saturation_pick(mi: np.ndarray, t: int) -> int | None:
    """The number of picks after which the batch's information `mi` (one value per pick, as
    `batchbald_batch` returns it) first reaches `SATURATED` of its bound log T; None if never
    (T = 1 holds no information: None)."""
    if t < 2:
        return None
    hit = np.flatnonzero(np.asarray(mi) >= SATURATED * math.log(t))
    return int(hit[0]) + 1 if len(hit) else None


def check_batchbald_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise FlexsampleError(f"--batchbald-samples must be an integer >= 1, got {samples!r}")


def selection_seed(seed: int, step: int) -> int:
    """The sampling generator's seed for query step `step` of a run seeded `seed`."""
    return int(np.random.SeedSequence([int(seed), int(step), 0xBA7CB]).generate_state(1)[0])


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


@register_estimator("batchbald")
class BatchBALDEstimator(Estimator):
    """BatchBALD: greedy joint mutual information over MC draws (Kirsch et al. 2019).

    `select` picks a class's quota greedily (exact joint entropies while C^m fits
    `batchbald_samples`, sampled configurations beyond, seeded by (seed, step)); `score` is
    per-sample BALD, so 'batchbald+density' ranks by BALD. `mc_samples` / `mc_mode` as for
    mcdropout (a snapshot source replaces the draws). Memory: N * T * C float32 for a class of
    N candidates, plus M * T * 40 bytes and the work buffers (module docstring).

    Size limit: a pick costs about N * T * M * C operations (M = `batchbald_samples`), measured
    on a 2-core CPU at T = 20, C = 8, M = 10,000 (`benchmarks/batchbald.py
    --per-pick`, load 11-16) at 0.45 s per sampled pick (0.06 s exact) for N = 500 and 1.07 s
    (0.17 s) for N = 2,000, and a flexible schedule asks for hundreds of picks per class.
    A class whose N * T exceeds
    `batchbald_max_draws` (default 50,000: 2,500 candidates at T = 20) therefore falls back,
    for that class and query, to power BALD (the engine's `--acquisition power` with beta 1 on
    the same BALD scores and the same Gumbel draws: what `--estimator mcdropout --acquisition
    power` would pick), with one warning line saying so. Raise the option to insist.
    """

    needs = frozenset({"mc"})

    def __init__(
        self,
        mc_samples: MCSamples = 20,
        mc_mode: MCMode = "head",
        batchbald_samples: Annotated[
            int,
            opt(
                "sampled joint configurations once exact joint entropies no longer fit",
                ge=100,
                le=10_000_000,
            ),
        ] = DEFAULT_SAMPLES,
        batchbald_max_draws: Annotated[
            int,
            opt(
                "candidates x MC draws of one class beyond which the class falls back to "
                "power BALD (a greedy pick's cost grows with it)",
                ge=1,
            ),
        ] = DEFAULT_MAX_DRAWS,
    ) -> None:
        check_mc_options(mc_samples, "bald", mc_mode)
        check_batchbald_samples(batchbald_samples)
        if (
            isinstance(batchbald_max_draws, bool)
            or not isinstance(batchbald_max_draws, int | np.integer)
            or batchbald_max_draws < 1
        ):
            raise FlexsampleError(
                f"batchbald_max_draws must be an integer >= 1, got {batchbald_max_draws!r}"
            )
        self.batchbald_max_draws = int(batchbald_max_draws)
        self.mc_samples = int(mc_samples)
        self.mc_mode = mc_mode
        self.batchbald_samples = int(batchbald_samples)
        self._saturation_reported = False

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        return ctx.reduce_mc(candidates, self.mc_samples, F.bald, mode=self.mc_mode)

    def _check_memory(self, ctx: ScoringContext, n: int, t: int, c: int) -> None:
        budget = ctx.mc_memory if ctx.mc_memory is not None else mc_memory_budget(ctx.device)
        configs = max(self.batchbald_samples, t)
        work = 2 * 4 * max(WORK_ELEMENTS.get(ctx.device.type, WORK_ELEMENTS["cuda"]), configs * c)
        fixed = configs * t * 40 + work + n * 24  # joint buffers, work buffers, gains
        need = n * t * c * 4 + fixed
        if need > budget:
            flag = "--mc-samples" if ctx.mc_source == "dropout" else "--snapshots"
            most = max(0, (budget - fixed) // (n * c * 4 + configs * 40))
            raise FlexsampleError(
                f"batchbald: the draws of {n} candidates ({t} draws x {c} classes) need about "
                f"{_size(need)}, more than the MC memory budget of {_size(budget)} on "
                f"{ctx.device}; use at most {flag} {most}, or fewer candidates per class"
            )

    def select(self, ctx: ScoringContext, candidates: np.ndarray, k: int) -> np.ndarray:
        candidates = np.sort(np.asarray(candidates, dtype=np.int64))  # ties: lowest index
        n, t, c = len(candidates), ctx.mc_draws(self.mc_samples), ctx.num_classes
        if n * t > self.batchbald_max_draws:
            return self._fallback(ctx, candidates, k, n, t)
        self._check_memory(ctx, n, t, c)
        probs = torch.empty((t, n, c), dtype=torch.float32, device=ctx.device)
        cond = torch.empty(n, dtype=torch.float64)
        pos = 0
        for chunk, p in ctx.iter_mc(candidates, self.mc_samples, self.mc_mode):
            probs[:, pos : pos + len(chunk)] = p
            cond[pos : pos + len(chunk)] = conditional_entropy(p).cpu()
            pos += len(chunk)
        seed = selection_seed(ctx.seed, ctx.step)
        picks, mi = batchbald_batch(probs, int(k), self.batchbald_samples, seed, cond)
        self._report_saturation(mi, t, ctx.step)
        return candidates[picks]

    def _report_saturation(self, mi: np.ndarray, t: int, step: int) -> None:
        """One warning line per run when a class's batch outgrows what T draws can tell."""
        at = saturation_pick(mi, t)
        if self._saturation_reported or at is None or at >= len(mi):
            return
        self._saturation_reported = True
        k = len(mi)
        warnings.warn(
            f"batchbald: at query {step} a class's batch reached {mi[at - 1]:.2f} nats of "
            f"information about the model after {at} of its {k} picks, near the most that "
            f"{t} MC draws can hold (log {t} = {math.log(t):.2f}); its other {k - at} picks, "
            "and such picks later in this run, are decided by sampling noise, not information: "
            "raise --mc-samples, or use power BALD (--estimator mcdropout --acquisition power) "
            "for large quotas (said once per run)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _fallback(
        self, ctx: ScoringContext, candidates: np.ndarray, k: int, n: int, t: int
    ) -> np.ndarray:
        """Power BALD (beta 1) for a class too large for greedy BatchBALD."""
        warnings.warn(
            f"batchbald: {n} candidates x {t} MC draws = {n * t} exceeds batchbald_max_draws "
            f"{self.batchbald_max_draws} (each greedy pick would cost about N x T x "
            f"{self.batchbald_samples} x {ctx.num_classes} operations); this class's {k} picks "
            "use power BALD instead (as --estimator mcdropout --acquisition power)",
            RuntimeWarning,
            stacklevel=2,
        )
        scores = self.score(ctx, candidates)
        keys = acquisition_keys(
            scores,
            candidates,
            np.array([0, n]),
            "power",
            1.0,
            seed=ctx.seed,
            step=ctx.step,
            num_items=ctx.num_items,
        )
        return candidates[top_k(keys, int(k))]
