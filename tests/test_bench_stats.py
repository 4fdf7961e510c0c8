"""Paired statistics of a bench summary (issue 9): hand-computed values, an independent
computation (exact bootstrap and sign-flip enumeration), properties, and the bench.csv /
summary.md / summary.png they end up in, failed cells included."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from flexsample.workflows import bench_stats as bs
from flexsample.workflows.bench import CELL_FILE, Cell, FailedRecord, config_hash
from flexsample.workflows.bench_summary import (
    CSV_COLUMNS,
    best_mark,
    failed_row,
    group_statistics,
    seed_points,
    summarise,
    varying_flags,
    write_summary,
)
from flexsample.workflows.config import RunConfig
from flexsample.workflows.outputs import RESULTS

# --- independent references ------------------------------------------------------------------


def exact_bootstrap_percentiles(d: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the mean over all n**n equally likely resamples (no Monte Carlo)."""
    n = len(d)
    idx = np.array(list(itertools.product(range(n), repeat=n)))
    means = d[idx].mean(axis=1)
    return float(np.percentile(means, q[0])), float(np.percentile(means, q[1]))


def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon p by enumerating every sign assignment of the ranks of |d| (zeros
    dropped, ties get average ranks): P(|T+ - E T+| >= observed) under the null."""
    d = d[d != 0]
    r = rankdata(np.abs(d))
    t_obs, centre = r[d > 0].sum(), r.sum() / 2
    hits = sum(
        abs(r[np.array(signs, dtype=bool)].sum() - centre) >= abs(t_obs - centre) - 1e-9
        for signs in itertools.product([0, 1], repeat=len(d))
    )
    return hits / 2 ** len(d)


# --- bench_stats -----------------------------------------------------------------------------


def test_paired_differences_use_shared_seeds_only():
    seeds, d = bs.paired_differences({3: 0.7, 0: 0.5, 1: 0.6}, {1: 0.4, 0: 0.6, 9: 0.1})
    assert seeds == (0, 1)
    np.testing.assert_allclose(d, [-0.1, 0.2])
    assert d[0] == -0.1  # rounded: equal differences tie exactly


def test_bootstrap_ci_hand_computed():
    # resampled means of {1, 3}: 1 (p 1/4), 2 (1/2), 3 (1/4): the 2.5 / 97.5 % points are 1, 3
    assert bs.bootstrap_ci([0.01, 0.03]) == pytest.approx((0.01, 0.03))
    # {6, 10, 10}: P(all 6) = 1/27 > 2.5 %, P(all 10) = 8/27: the interval is [6, 10]
    assert bs.bootstrap_ci([0.10, 0.10, 0.06]) == pytest.approx((0.06, 0.10))
    assert bs.bootstrap_ci([0.02]) is None
    assert bs.bootstrap_ci([0.02, 0.02, 0.02]) == (0.02, 0.02)  # degenerate: no resampling


@pytest.mark.parametrize(
    "d",
    [[0.01, 0.02, 0.04, 0.08], [-0.03, 0.01, 0.02, 0.05, 0.06], [-0.02, -0.01, 0.0, 0.04]],
)
def test_bootstrap_ci_matches_exact_enumeration(d):
    d = np.array(d)
    lo, hi = bs.bootstrap_ci(d)
    ex_lo, ex_hi = exact_bootstrap_percentiles(d, (2.5, 97.5))
    assert lo == pytest.approx(ex_lo, abs=0.003)
    assert hi == pytest.approx(ex_hi, abs=0.003)


def test_bootstrap_ci_is_reproducible_and_seeded():
    d = np.array([-0.03, 0.01, 0.02, 0.05, 0.06, 0.011, -0.004])
    assert bs.bootstrap_ci(d) == bs.bootstrap_ci(d)
    assert bs.bootstrap_ci(d, seed=1) != bs.bootstrap_ci(d, seed=2)


def test_wilcoxon_hand_computed():
    # six positive distinct differences: only all-plus and all-minus are as extreme, 2 / 64
    assert bs.wilcoxon_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == pytest.approx(2 / 64)
    # the smallest one negative: T- = 1; P(T- <= 1) = 2 / 64, two-sided 4 / 64
    assert bs.wilcoxon_p([-0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == pytest.approx(4 / 64)
    # five pairs could never reach 0.05 (best case 2 / 32): not run
    assert bs.wilcoxon_p([0.01, 0.02, 0.03, 0.04, 0.05]) is None
    assert sign_flip_p(np.array([0.01, 0.02, 0.03, 0.04, 0.05])) == 2 / 32
    # zeros are dropped before counting
    assert bs.wilcoxon_p([0.0, 0.01, 0.02, 0.03, 0.04, 0.05]) is None


def test_wilcoxon_matches_sign_flip_enumeration():
    rng = np.random.default_rng(7)
    for _ in range(8):
        n = int(rng.integers(6, 11))
        d = np.round(rng.normal(0.01, 0.02, n), 2)  # ties and zeros on purpose
        if np.count_nonzero(d) < bs.MIN_TEST_PAIRS:
            continue
        assert bs.wilcoxon_p(d) == pytest.approx(sign_flip_p(d), abs=1e-9), d


def test_compare_notes():
    none = bs.compare({0: 0.5}, {1: 0.5})
    assert none.n == 0 and math.isnan(none.mean_diff) and none.ci is None
    assert none.ci_note == "no shared seed"
    one = bs.compare({0: 0.5, 1: 0.9}, {0: 0.4})
    assert one.n == 1 and one.mean_diff == pytest.approx(0.1) and one.ci is None
    assert one.ci_note == "n/a, one shared seed" and one.p_note == "too few seeds"
    few = bs.compare({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.4})
    assert few.ci == pytest.approx((0.1, 0.2)) and few.p is None and few.p_note == "too few seeds"
    a = {s: 0.5 + 0.01 * s for s in range(7)}
    b = {s: 0.5 for s in range(7)}  # seed 0 ties: six non-zero differences, the test runs
    assert bs.compare(a, b).p == pytest.approx(2 / 64)
    b[1] = a[1]  # five non-zero differences left
    c = bs.compare(a, b)
    assert c.p is None and c.p_note == "too few non-zero differences"


def test_not_distinguishable_definition():
    def pc(ci, p, mean=-0.02):
        return bs.PairedComparison((0, 1), mean, ci, p)

    assert bs.not_distinguishable(pc((-0.03, 0.01), None)) is True  # CI contains 0
    assert bs.not_distinguishable(pc((-0.03, 0.0), None)) is True  # closed interval
    assert bs.not_distinguishable(pc((-0.03, -0.01), None)) is False
    assert bs.not_distinguishable(pc((-0.03, -0.01), 0.2)) is True  # the test disagrees
    assert bs.not_distinguishable(pc((-0.03, -0.01), 0.01)) is False
    assert bs.not_distinguishable(pc((-0.03, 0.01), 0.01)) is True
    assert bs.not_distinguishable(pc(None, None)) is None
    assert best_mark(None) == "best"
    assert best_mark(pc((-0.03, -0.01), None)) == "below"
    assert best_mark(pc((0.01, 0.03), None, mean=0.02)) == "above"
    assert best_mark(pc((-0.03, 0.01), None)) == "≈"
    assert best_mark(bs.PairedComparison((0,), 0.1, None, None)) == "n/a (one shared seed)"
    assert best_mark(bs.PairedComparison((), math.nan, None, None)) == "n/a (no shared seed)"


def test_reference_index():
    assert bs.reference_index([0.9, 0.6, 0.7], [False, True, True]) == (2, True)
    assert bs.reference_index([0.9, 0.6, 0.7], [False] * 3) == (0, False)
    assert bs.reference_index([0.5, 0.7, 0.7], [True] * 3) == (1, True)  # earlier wins a tie
    assert bs.reference_index([math.nan, 0.1], [True, True]) == (1, True)
    with pytest.raises(ValueError, match="no configurations"):
        bs.reference_index([], [])


values = st.floats(0.0, 1.0, allow_nan=False)
per_seed = st.dictionaries(st.integers(0, 9), values, min_size=2, max_size=8)


@settings(max_examples=40, deadline=None)
@given(per_seed, per_seed)
def test_swapping_the_pair_negates_the_difference(a, b):
    ab, ba = bs.compare(a, b), bs.compare(b, a)
    assert ab.seeds == ba.seeds
    if ab.n == 0:
        return
    assert ab.mean_diff == pytest.approx(-ba.mean_diff, abs=1e-12)
    if ab.ci is not None:
        assert ab.ci == pytest.approx((-ba.ci[1], -ba.ci[0]), abs=1e-9)
    assert (ab.p is None) == (ba.p is None)
    if ab.p is not None:
        assert ab.p == pytest.approx(ba.p)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=2, max_size=8))
def test_interval_contains_the_mean_difference(d):
    d = np.round(np.array(d), bs.DECIMALS)
    lo, hi = bs.bootstrap_ci(d)
    assert lo - 1e-12 <= float(np.mean(d)) <= hi + 1e-12
    assert lo <= hi


@settings(max_examples=25, deadline=None)
@given(per_seed, per_seed, st.dictionaries(st.integers(10, 20), values, max_size=3))
def test_seeds_only_one_side_ran_change_nothing(a, b, extra):
    assert bs.compare({**a, **extra}, b) == bs.compare(a, b)


# --- the summary -----------------------------------------------------------------------------


def _rows(method: str, values: list[float], dataset: str = "d", ratio: float = 100.0) -> list:
    return [
        {
            "dataset": dataset,
            "imbalance_ratio": ratio,
            "method": method,
            "seed": seed,
            "test_balanced_accuracy": v,
            "head": None,
            "medium": None,
            "tail": None,
            "best_val_balanced_accuracy": None,
        }
        for seed, v in enumerate(values)
    ]


# group d / r = 100 (hand-computed below) and group e / r = 10 (no baseline, seven seeds)
GROUP_D = {
    "baseline:ce": [0.60, 0.62, 0.64],
    "baseline:rs": [0.50, 0.52, 0.54],
    "a/linear": [0.70, 0.72, 0.70],
    "b/full": [0.69, 0.66],
    "c/full": [0.65],
    "d/full": [0.71, 0.69, 0.70],
}
X = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86]
GROUP_E = {"x/full": X, "y/full": [x - 0.01 * (i + 1) for i, x in enumerate(X)]}


def test_summarise_skips_failed_rows_and_keeps_seed_values():
    rows = _rows("a", [0.5, 0.7]) + [
        {**_rows("a", [0.6])[0], "seed": 1},  # seed 1 twice: its mean counts
        {**_rows("a", [0.0])[0], "status": "failed", "test_balanced_accuracy": None},
    ]
    [e] = summarise(rows)
    assert e["n"] == 3
    assert e["seed_values"] == {0: 0.5, 1: pytest.approx(0.65)}
    assert e["values"] == [0.5, 0.7, 0.6]  # in seed order


def test_group_statistics_hand_computed():
    rows = [r for m, v in GROUP_D.items() for r in _rows(m, v)]
    entries = summarise(rows)
    assert [e["method"] for e in entries] == [
        "a/linear",
        "d/full",
        "b/full",
        "c/full",
        "baseline:ce",
        "baseline:rs",
    ]
    stats = group_statistics(entries)
    assert (stats.reference, stats.reference_is_baseline, stats.best) == (4, True, 0)
    a, d, b, c, ce, rs = stats.vs_reference
    assert ce is None
    assert a.mean_diff == pytest.approx(0.26 / 3) and a.ci == pytest.approx((0.06, 0.10))
    assert d.mean_diff == pytest.approx(0.08) and d.ci == pytest.approx((0.06, 0.11))
    assert b.n == 2 and b.ci == pytest.approx((0.04, 0.09))
    assert c.n == 1 and c.ci is None
    assert rs.ci == (-0.1, -0.1)
    marks = [best_mark(x) for x in stats.vs_best]
    assert marks == ["best", "≈", "below", "n/a (one shared seed)", "below", "below"]


def test_group_without_baselines_compares_with_the_best():
    entries = summarise([r for m, v in GROUP_E.items() for r in _rows(m, v, "e", 10.0)])
    stats = group_statistics(entries)
    assert (stats.reference, stats.reference_is_baseline) == (0, False)
    y = stats.vs_reference[1]
    assert y.n == 7 and y.mean_diff == pytest.approx(-0.04)
    assert y.p == pytest.approx(2 / 2**7)  # seven negative distinct differences
    assert stats.vs_best is stats.vs_reference


def test_seed_points_lie_on_their_bar():
    entries = summarise(_rows("a", [0.5, 0.7, 0.6]) + _rows("b", [0.4]))
    pts = seed_points(entries)
    assert pts == [
        (50.0, -0.25),
        (70.0, 0.0),
        (pytest.approx(60.0), 0.25),
        (40.0, 1.0),
    ]


# --- bench.csv / summary.md / summary.png over a bench folder ---------------------------------


def _config(method: str, seed: int, dataset: str, ratio: float) -> dict:
    est, _, pol = method.partition("/")
    return {  # a cell.json config in today's layout: the ratio in the dataset's section
        "dataset": dataset,
        "dataset_options": {"imbalance_ratio": ratio},
        "seed": seed,
        "estimator": est if pol else "random",
        "policy": pol or "full",
        "rounds": 2,
    }


def _cell_dir(out: Path, method: str, seed: int, key: str, dataset: str, ratio: float) -> Path:
    name = method.replace("/", "-").replace(":", "-")
    return out / f"{dataset}-r{ratio:g}" / name / f"seed{seed}-{key[:10]}"


def _finished(out: Path, method: str, seed: int, value: float, dataset: str, ratio: float):
    config, version = _config(method, seed, dataset, ratio), "0.1.0"
    key = config_hash(config, version)
    path = _cell_dir(out, method, seed, key, dataset, ratio)
    path.mkdir(parents=True)
    test = {"balanced_accuracy": value, "group_recall": {"head": 0.9}}
    if method == "a/linear":
        test.update(macro_auc=0.75, ece=0.125)  # the optional medical metrics
    (path / RESULTS).write_text(json.dumps({"test": test}))
    doc = {
        "format": 1,
        "status": "finished",
        "method": method,
        "baseline": method.startswith("baseline:"),
        "config_hash": key,
        "flexsample_version": version,
        "config": config,
        "wall_s": 1.5,
    }
    (path / CELL_FILE).write_text(json.dumps(doc))
    return Cell(method, doc["baseline"], RunConfig(), path, key)


def _failed(out: Path, method: str, seed: int, error: str, attempts: int) -> Cell:
    config, version = _config(method, seed, "d", 100.0), "0.1.0"
    key = config_hash(config, version)
    path = _cell_dir(out, method, seed, key, "d", 100.0)
    path.mkdir(parents=True)
    doc = {
        "format": 1,
        "status": "failed",
        "method": method,
        "baseline": False,
        "config_hash": key,
        "flexsample_version": version,
        "config": config,
        "error": error,
        "attempts": attempts,
    }
    (path / CELL_FILE).write_text(json.dumps(doc))
    return Cell(method, False, RunConfig(), path, key)


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("bench")
    cells = []
    for group, (ds, ratio) in ((GROUP_D, ("d", 100.0)), (GROUP_E, ("e", 10.0))):
        for method, vals in group.items():
            cells += [_finished(out, method, s, v, ds, ratio) for s, v in enumerate(vals)]
    cells.append(_failed(out, "e/full", 0, "RuntimeError: boom\n  at line 2", 2))
    _failed(out, "f/full", 1, "OSError: " + "x" * 300, 1)  # left by an earlier grid
    info = write_summary(out, cells, "flexsample bench --test")
    return out, info


def test_csv_has_status_error_and_the_optional_metrics(bench_folder):
    out, info = bench_folder
    with open(out / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS  # no flag varies within a method here
    assert len(rows) == 3 + 3 + 3 + 2 + 1 + 3 + 7 + 7 + 2
    assert (info.grid_cells, info.other_cells, info.failed_cells) == (29, 0, 2)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["method"] for r in failed] == ["e/full", "f/full"]
    e = failed[0]
    assert e["error"] == "RuntimeError: boom at line 2"  # one line
    assert e["seed"] == "0" and e["in_grid"] == "yes" and failed[1]["in_grid"] == "no"
    metrics = ["test_balanced_accuracy", "test_macro_auc", "test_ece", "head", "wall_s"]
    assert all(e[m] == "" for m in metrics)
    finished = [r for r in rows if r["status"] == "finished"]
    assert all(r["error"] == "" for r in finished)
    a = next(r for r in finished if r["method"] == "a/linear")
    assert (a["test_macro_auc"], a["test_ece"]) == ("0.750000", "0.125000")
    ce = next(r for r in finished if r["method"] == "baseline:ce")
    assert (ce["test_macro_auc"], ce["test_ece"]) == ("", "")
    # the rows follow the folders: a failed cell sits between its neighbours
    assert [r["cell"] for r in rows] == sorted(
        (r["cell"] for r in rows), key=lambda c: Path(c).parts
    )


def test_summary_md_statistics_and_failed_cells(bench_folder):
    out, _ = bench_folder
    md = (out / "summary.md").read_text()
    for line in [
        "| a/linear | 3 | +8.67 | [+6.00, +10.00] | too few seeds | best |",
        "| d/full | 3 | +8.00 | [+6.00, +11.00] | too few seeds | ≈ |",
        "| b/full | 2 | +6.50 | [+4.00, +9.00] | too few seeds | below |",
        "| c/full | 1 | +5.00 | n/a, one shared seed | too few seeds | n/a (one shared seed) |",
        "| baseline:ce ★ | - | reference | - | - | below |",
        "| baseline:rs | 3 | -10.00 | [-10.00, -10.00] | too few seeds | below |",
        "| x/full | - | reference | - | - | best |",
        "| y/full | 7 | -4.00 | [-5.43, -2.57] | 0.016 | below |",
    ]:
        assert line + "\n" in md, line
    assert "| 5 | baseline:ce ★ | 3 |" in md  # the ranking keeps its star
    assert "Paired statistics against ★ baseline:ce (the strongest baseline)." in md
    assert "No baseline in this group: paired statistics against the best configuration" in md
    assert "≈ = not distinguishable from the best, meaning at least 2 shared seeds" in md
    # failed cells: at the end, never in a table
    tail = md[md.index("## Failed cells") :]
    assert "2 cells failed" in tail
    assert (
        "- e/full seed 0 (d, r = 100, 2 attempts): RuntimeError: boom at line 2 (`d-r100/" in tail
    )
    assert "- f/full seed 1 (d, r = 100, 1 attempt) †: OSError: " in tail
    assert "x" * 300 not in tail and "…" in tail
    assert "e/full" not in md[: md.index("## Failed cells")]
    assert (out / "summary.png").stat().st_size > 0


def test_interval_of_y_against_exact_enumeration():
    """The 7-seed interval in summary.md, by the independent exact bootstrap (7**7 draws)."""
    d = np.array([-0.01 * (i + 1) for i in range(7)])
    lo, hi = bs.bootstrap_ci(d)
    rng = np.random.default_rng(0)  # 7**7 is too many to enumerate quickly: a big sample
    means = d[rng.integers(0, 7, (400_000, 7))].mean(axis=1)
    assert lo == pytest.approx(np.percentile(means, 2.5), abs=0.0015)
    assert hi == pytest.approx(np.percentile(means, 97.5), abs=0.0015)


def test_failed_records_count_for_csv_flags_only():
    """A flag that differs only on a failed cell is a CSV column, never a summary one."""
    ok = FailedRecord("a", False, {"seed": 0, "rounds": 2}, "k", "0.1.0", "boom", 1, Path("x"))
    other = FailedRecord("a", False, {"seed": 1, "rounds": 3}, "k", "0.1.0", "boom", 1, Path("y"))
    assert varying_flags([ok, other]) == ["rounds"]
    row = failed_row(other, ["rounds"], False, Path("."))
    assert row["rounds"] == 3 and row["status"] == "failed" and row["in_grid"] == "no"
    assert row["test_balanced_accuracy"] is None and row["_attempts"] == 1
