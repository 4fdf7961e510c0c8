"""Paired statistics for a bench summary: is a configuration really better or worse than another?

Researchers compare methods over few seeds, where a mean ± std per method hides what the seeds
share: two configurations run with the same seed see the same split, initialisation and data
order, so the per-seed difference cancels much of the seed-to-seed noise. Everything here works on
those paired differences (over the seeds both sides ran; a seed only one side ran is ignored):

- the mean difference with a 95 % percentile bootstrap confidence interval
  (`scipy.stats.bootstrap`, resampling the per-seed differences, seeded so that a summary is
  reproducible);
- a two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, zero differences dropped), run
  only with at least `MIN_TEST_PAIRS` non-zero differences: below six pairs the smallest
  two-sided p-value an exact Wilcoxon test can give is 2 / 2**5 = 0.0625, so it could never
  reject at 0.05 and would only look like evidence of "no difference".

Pure functions on numbers; the summary (`bench_summary`) decides what to compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
# the smallest n at which an exact two-sided Wilcoxon test can reach p < ALPHA: 2 / 2**6 = 0.031
MIN_TEST_PAIRS = 6
# differences are rounded so that equal differences of float metrics tie (and zeros are zero)
DECIMALS = 12

NO_SHARED_SEED = "no shared seed"
ONE_SHARED_SEED = "n/a, one shared seed"
TOO_FEW_SEEDS = "too few seeds"
TOO_FEW_NONZERO = "too few non-zero differences"


@dataclass(frozen=True)
class PairedComparison:
    """`a - b` over the seeds both ran. `ci` is None below two shared seeds and `p` is None
    when the test was not run; `ci_note` / `p_note` then say why."""

    seeds: tuple[int, ...]
    mean_diff: float  # nan without a shared seed
    ci: tuple[float, float] | None
    p: float | None
    ci_note: str = ""
    p_note: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_differences(
    a: Mapping[int, float], b: Mapping[int, float]
) -> tuple[tuple[int, ...], np.ndarray]:
    """The seeds both `a` and `b` ran (sorted) and the differences a[seed] - b[seed]."""
    seeds = tuple(sorted(set(a) & set(b)))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    return seeds, np.round(diffs, DECIMALS)


def bootstrap_ci(
    diffs: np.ndarray | Sequence[float],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `diffs` (resampled with replacement).

    None for fewer than two values (one value has no spread to resample); identical values
    give the degenerate interval (value, value) without resampling.
    """
    from scipy.stats import bootstrap

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return None
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def wilcoxon_p(
    diffs: np.ndarray | Sequence[float], min_pairs: int = MIN_TEST_PAIRS
) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of `diffs` (zeros dropped), or None with fewer
    than `min_pairs` non-zero differences."""
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=np.float64)
    if int(np.count_nonzero(d)) < min_pairs:
        return None
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def compare(
    a: Mapping[int, float],
    b: Mapping[int, float],
    seed: int = BOOTSTRAP_SEED,
    min_pairs: int = MIN_TEST_PAIRS,
) -> PairedComparison:
    """`a` against `b` (per-seed values of one metric): mean paired difference, its bootstrap
    interval and the Wilcoxon p-value, each where the shared seeds allow it."""
    seeds, d = paired_differences(a, b)
    if len(d) == 0:
        return PairedComparison(seeds, math.nan, None, None, NO_SHARED_SEED, TOO_FEW_SEEDS)
    ci = bootstrap_ci(d, seed=seed)
    p = wilcoxon_p(d, min_pairs)
    p_note = ""
    if p is None:
        p_note = TOO_FEW_SEEDS if len(d) < min_pairs else TOO_FEW_NONZERO
    return PairedComparison(
        seeds,
        float(np.mean(d)),
        ci,
        p,
        "" if ci is not None else ONE_SHARED_SEED,
        p_note,
    )


def not_distinguishable(c: PairedComparison, alpha: float = ALPHA) -> bool | None:
    """True when the data cannot tell the two sides apart: at least two shared seeds, and the
    interval of the paired difference contains 0 or the Wilcoxon test (where run) gives
    p >= alpha. False when the interval excludes 0 and the test, where run, gives p < alpha.
    None below two shared seeds (nothing to judge by)."""
    if c.ci is None:
        return None
    lo, hi = c.ci
    return lo <= 0.0 <= hi or (c.p is not None and c.p >= alpha)


def reference_index(means: Sequence[float], baseline: Sequence[bool]) -> tuple[int, bool]:
    """Index of the configuration to compare against: the strongest baseline (highest mean),
    or, without baselines, the best configuration overall. The flag says whether it is a
    baseline. Earlier entries win ties; nan means never win."""
    if not means:
        raise ValueError("no configurations to pick a reference from")
    pool = [i for i, b in enumerate(baseline) if b] or list(range(len(means)))
    best = max(pool, key=lambda i: (-math.inf if math.isnan(means[i]) else means[i], -i))
    return best, bool(baseline[best])
