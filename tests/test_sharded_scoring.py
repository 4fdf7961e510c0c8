"""Sharded scoring (issue 10): 2 gloo ranks on CPU score, select and query exactly as one
process does, for every built-in estimator, MC head / full / snapshot draws and a combination.

Why one spawned job: starting two ranks costs seconds (imports, the group's rendezvous), so a
single 2-rank job computes every case once and saves what each rank saw; the single-process
reference runs in this process meanwhile. The parametrized tests then only compare arrays.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from flexsample.engine import Curriculum, EpochResult, Pool, get_allocation, get_policy
from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.distributed import Ranks, shard_bounds
from flexsample.engine.loop import Callback, QueryResult
from flexsample.engine.registries import list_estimators
from flexsample.engine.scoring import is_selector, score_candidates, select_candidates
from flexsample.engine.selection import select_segments
from flexsample.estimators import build_estimator
from flexsample.workflows.components import option_fields

WORLD = 2
CLASS_SIZES = (61, 45, 33, 20, 11)  # long-tailed; odd sizes give uneven rank shards
NUM_CLASSES = len(CLASS_SIZES)
QUOTAS = np.array([7, 5, 4, 3, 2])
BATCH = 16  # several batches per shard, and a block of 2 x 16 for iter_mc
# small MC settings keep the job short; every option an estimator lacks is dropped
OPTIONS: dict[str, Any] = {"mc_samples": 12, "knn": 5}


def estimator(spec: str, **options: Any) -> Any:
    """`build_estimator(spec, ...)` with the options `spec` declares (build_estimator refuses
    the others)."""
    takes = option_fields("estimator", spec)
    return build_estimator(spec, **{k: v for k, v in options.items() if k in takes})


# (case id, estimator spec, extra options, MC source)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    *[(name, name, {}, "dropout") for name in list_estimators()],
    ("mcdropout-full", "mcdropout", {"mc_mode": "full"}, "dropout"),
    ("mcdropout-entropy-full", "mcdropout", {"mc_mode": "full", "mc_score": "entropy"}, "dropout"),
    ("batchbald-full", "batchbald", {"mc_mode": "full"}, "dropout"),
    ("info-density-full", "info-density", {"mc_mode": "full"}, "dropout"),
    ("mcdropout+density", "mcdropout+density", {}, "dropout"),
    ("margin+coreset", "margin+coreset", {"combine": "rank-product"}, "dropout"),
    ("snapshots-mcdropout", "mcdropout", {}, "snapshots"),
    ("snapshots-batchbald", "batchbald", {}, "snapshots"),
]
CASE_IDS = [c[0] for c in CASES]
# (case id, estimator spec, MC source, acquisition)
LOOPS: list[tuple[str, str, str, str]] = [
    ("mcdropout", "mcdropout", "dropout", "topk"),
    ("coreset", "coreset", "dropout", "topk"),
    ("mcdropout+density", "mcdropout+density", "dropout", "topk"),
    ("entropy-softmax", "entropy", "dropout", "softmax"),
    ("snapshots-batchbald", "batchbald", "snapshots", "topk"),
]
LOOP_IDS = [c[0] for c in LOOPS]


class DropoutNet(nn.Module):
    """Dropout inside the backbone (what full mode draws) and before the head (head mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(0.2),
            nn.Conv2d(6, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.1),
        )
        self.head = nn.Linear(48, NUM_CLASSES)
        self.dropout_p = 0.4

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def make_model(seed: int = 0) -> DropoutNet:
    torch.manual_seed(seed)
    model = DropoutNet()
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # confident enough that the scores spread out
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_data() -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), CLASS_SIZES))
    x = rng.normal(size=(len(labels), 1, 8, 8)) + labels[:, None, None, None] * 0.3
    return torch.as_tensor(x, dtype=torch.float32), labels.astype(np.int64)


def subset_and_groups(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A quarter of each class is the subset; the rest, by class and ascending, the pool."""
    sub, groups = [], []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        cut = len(members) // 4
        sub.append(members[:cut])
        groups.append(members[cut:])
    return np.sort(np.concatenate(sub)), groups


def snapshot_states(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Three ensemble members: the model's weights with seeded perturbations of the head."""
    out = []
    for k in range(3):
        state = {n: t.clone() for n, t in model.state_dict().items()}
        g = torch.Generator().manual_seed(50 + k)
        state["head.weight"] += 1.5 * torch.randn(state["head.weight"].shape, generator=g)
        out.append(state)
    return out


class PerturbingLearner:
    """The engine's Learner protocol with no optimiser: each epoch nudges the head by a
    generator seeded with the epoch (the same on every rank), validation follows a script."""

    ACCS = (0.2, 0.5, 0.4, 0.6, 0.55, 0.7)

    def __init__(self, model: nn.Module, drift: float = 0.0) -> None:
        self.model = model
        self.drift = drift  # > 0: this rank's head differs from the others'
        self.epoch = 0

    def start_round(self, round_index: int, num_epochs: int) -> None:
        return None

    def train_epoch(self, indices: np.ndarray, epoch: int) -> EpochResult:
        g = torch.Generator().manual_seed(100 + epoch)
        with torch.no_grad():
            w = self.model.head.weight
            w.add_(0.5 * torch.randn(w.shape, generator=g) + self.drift * torch.randn(w.shape))
        self.epoch = epoch
        return EpochResult(loss=0.0, seconds=0.0)

    def validate(self) -> tuple[float, list[float]]:
        acc = self.ACCS[self.epoch % len(self.ACCS)]
        return acc, [acc] * NUM_CLASSES

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])


class Queries(Callback):
    """Keeps every query's candidates, scores and chosen indices."""

    def __init__(self) -> None:
        self.results: list[QueryResult] = []

    def on_query(self, result: QueryResult) -> None:
        self.results.append(result)


def run_loop(
    spec: str, source: str, acquisition: str, ranks: Ranks | None, drift: float = 0.0
) -> dict[str, Any]:
    x, labels = make_data()
    learner = PerturbingLearner(make_model(1), drift)
    seen = Queries()
    loop = Curriculum(
        Pool(labels, NUM_CLASSES),
        get_policy("linear"),
        get_allocation("proportional"),
        estimator(spec, **OPTIONS),
        learner,
        tensor_inputs(x),
        rounds=4,
        epochs_per_round=1,
        seed=3,
        score_batch_size=BATCH,
        acquisition=acquisition,
        callbacks=[seen],
        mc_source=source,
        snapshots=3,
        ranks=ranks,
    )
    sub, _ = subset_and_groups(labels)
    loop.start(sub[::2])
    loop.run()
    return {
        "entered": loop.pool.entered.copy(),
        "history": loop.pool.history()[0],
        "chosen": [r.chosen for r in seen.results],
        "scores": [r.scores for r in seen.results],
        "score_samples": [r.score_samples for r in loop.records],
    }


def score_case(
    spec: str, extra: dict[str, Any], source: str, ranks: Ranks | None
) -> dict[str, Any]:
    """Scores of every candidate, the engine's per-class top-k of them, and for a selector
    its per-class picks; each from a fresh context (nothing cached between them)."""
    x, labels = make_data()
    model = make_model()
    sub, groups = subset_and_groups(labels)
    candidates = np.concatenate(groups)
    est = estimator(spec, **{**OPTIONS, **extra})

    def context() -> ScoringContext:
        return ScoringContext(
            model,
            tensor_inputs(x),
            labels,
            seed=5,
            step=2,
            batch_size=BATCH,
            subset_indices=sub,
            ranks=ranks,
            snapshots=snapshot_states(model) if source == "snapshots" else None,
        )

    ctx = context()
    scores = score_candidates(est, ctx, candidates)
    bounds = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
    out: dict[str, Any] = {
        "scores": scores,
        "topk": select_segments(candidates, scores, bounds, QUOTAS),
        "backbone_items": ctx.stats["backbone_items"],  # this rank's share of the passes
    }
    if is_selector(est):
        ctx = context()
        out["select"] = [
            select_candidates(est, ctx, g, int(k)) for g, k in zip(groups, QUOTAS, strict=True)
        ]
    return out


def edge_cases(ranks: Ranks | None) -> dict[str, Any]:
    """Fewer candidates than ranks (one rank's shard is empty), a cache that already holds
    some features, and `iter_mc`'s gathered blocks for every MC source."""
    x, labels = make_data()
    model = make_model()

    def context(**kw: Any) -> ScoringContext:
        return ScoringContext(
            model, tensor_inputs(x), labels, seed=5, step=2, batch_size=BATCH, ranks=ranks, **kw
        )

    out: dict[str, Any] = {}
    for n in (0, 1, 3):
        cand = np.arange(10, 10 + n)
        for name, mode in (("mcdropout", "head"), ("mcdropout", "full"), ("entropy", "head")):
            est = estimator(name, mc_samples=6, mc_mode=mode)
            out[f"{name}-{mode}-n{n}"] = score_candidates(est, context(), cand)
        out[f"snapshots-n{n}"] = score_candidates(
            build_estimator("mcdropout"), context(snapshots=snapshot_states(model)), cand
        )
    ctx = context()
    ctx.features(np.arange(0, 150, 3))  # a partly filled cache, then everything
    out["partial-cache"] = ctx.features(np.arange(len(labels)))
    idx = np.random.default_rng(1).permutation(len(labels))[:77]  # any order, not sorted
    for mode in ("head", "full"):
        draws = [p.numpy() for _, p in context().iter_mc(idx, 5, mode)]
        out[f"iter_mc-{mode}"] = np.concatenate(draws, axis=1)
    snap = context(snapshots=snapshot_states(model))
    out["iter_mc-snapshots"] = np.concatenate([p.numpy() for _, p in snap.iter_mc(idx, 5)], 1)
    chunks = [c for c, _ in context().iter_mc(idx, 5, "head")]
    out["iter_mc-chunks"] = np.concatenate(chunks)
    return out


def collectives(ranks: Ranks) -> dict[str, Any]:
    """`Ranks` itself: uneven and empty shards, booleans, rank 0's array and object."""
    r = ranks.rank
    rows = np.arange(3 * (r + 1), dtype=np.float64).reshape(-1, 3) + 100 * r
    empty = np.zeros((0, 2), np.int64) if r == 1 else np.array([[7, 8]], np.int64)
    flags = np.array([True, False, r == 1])
    return {
        "rows": ranks.gather_rows(rows),
        "empty": ranks.gather_rows(empty),
        "flags": ranks.gather_rows(flags),
        "tensor": ranks.gather_rows(torch.full((r + 1, 2), float(r))),
        "broadcast": ranks.broadcast(np.arange(4) * (r + 1)),
        "object": ranks.broadcast_object({"rank": r}),
    }


def compute_all(ranks: Ranks | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cases": {cid: score_case(spec, extra, src, ranks) for cid, spec, extra, src in CASES},
        "edges": edge_cases(ranks),
        "loops": {lid: run_loop(spec, src, acq, ranks) for lid, spec, src, acq in LOOPS},
    }
    if ranks is not None:
        out["collectives"] = collectives(ranks)
        # rank 1's model drifts: rank 0's picks still become every rank's pool
        out["drift"] = run_loop("entropy", "dropout", "topk", ranks, drift=0.5 * ranks.rank)
    return out


def _rank_job(rank: int, store: str, out_dir: str) -> None:
    """One rank of the 2-process gloo job: every case, saved to out_dir/rank{rank}.pkl."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        ranks = Ranks()
        res = compute_all(ranks)
        res["world"] = ranks.world
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(res))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{'single': ..., 0: rank 0's, 1: rank 1's}; the reference runs while the ranks do."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("sharded")
    job = mp.spawn(_rank_job, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = compute_all(None)
    finally:
        torch.set_num_threads(threads)
        while not job.join():
            pass
    return {
        "single": single,
        **{r: pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)},
    }


def _both_ranks(results: dict[str, Any], pick: Callable[[dict[str, Any]], Any]) -> list[Any]:
    return [pick(results[r]) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASE_IDS)
def test_sharded_scores_equal_single_process(results: dict[str, Any], case: str) -> None:
    ref = results["single"]["cases"][case]
    for got in _both_ranks(results, lambda r: r["cases"][case]):
        # float32 features batched differently per rank: equal to a few ulps, absolute for
        # scores near 1, relative for larger ones (typiclust's squared-distance typicality)
        np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got["topk"], ref["topk"])


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[1] in ("badge", "batchbald", "coreset", "typiclust")],
    ids=lambda c: c[0],
)
def test_sharded_selector_picks_equal_single_process(
    results: dict[str, Any], case: tuple[str, str, dict[str, Any], str]
) -> None:
    ref = results["single"]["cases"][case[0]]["select"]
    assert [len(p) for p in ref] == QUOTAS.tolist()
    for got in _both_ranks(results, lambda r: r["cases"][case[0]]["select"]):
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_array_equal(g, r)  # same picks, same pick order


@pytest.mark.parametrize("case", CASE_IDS)
def test_sharded_backbone_work_is_split_not_repeated(results: dict[str, Any], case: str) -> None:
    """Each rank pushes only its shard through the backbone; together, what one process does."""
    single = results["single"]["cases"][case]["backbone_items"]
    per_rank = _both_ranks(results, lambda r: r["cases"][case]["backbone_items"])
    assert sum(per_rank) == single
    if single:
        assert max(per_rank) - min(per_rank) <= single // 4, per_rank  # shards, not one rank
    else:
        assert case == "random"


def test_every_builtin_estimator_and_selector_is_covered() -> None:
    from flexsample.engine.registries import ESTIMATORS

    builtins = {n for n in list_estimators() if ESTIMATORS.is_builtin(n)}  # not tests' plugins
    covered = {spec for _, spec, _, _ in CASES}
    assert builtins <= covered
    selectors = {n for n in builtins if is_selector(build_estimator(n))}
    assert selectors == {"badge", "batchbald", "coreset", "typiclust"}


def test_scores_are_informative(results: dict[str, Any]) -> None:
    """Guard against a vacuous comparison: the scores spread out, full mode differs from
    head mode, and snapshot draws differ from dropout draws."""
    cases = results["single"]["cases"]
    for cid in CASE_IDS:
        if cid != "random":
            assert np.ptp(cases[cid]["scores"]) > 1e-3, cid
    for a, b in (("mcdropout", "mcdropout-full"), ("mcdropout", "snapshots-mcdropout")):
        assert np.abs(cases[a]["scores"] - cases[b]["scores"]).max() > 1e-3


def test_edge_cases_equal_single_process(results: dict[str, Any]) -> None:
    ref = results["single"]["edges"]
    for got in _both_ranks(results, lambda r: r["edges"]):
        assert got.keys() == ref.keys()
        for key in ref:
            assert np.shape(got[key]) == np.shape(ref[key]), key
            if key == "iter_mc-chunks":  # blocks may differ in size, never in order
                np.testing.assert_array_equal(got[key], ref[key])
            else:
                np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6, err_msg=key)
    assert ref["iter_mc-head"].shape == (5, 77, NUM_CLASSES)
    assert ref["iter_mc-snapshots"].shape == (3, 77, NUM_CLASSES)


@pytest.mark.parametrize("loop", LOOP_IDS)
def test_sharded_curriculum_picks_what_one_process_picks(
    results: dict[str, Any], loop: str
) -> None:
    ref = results["single"]["loops"][loop]
    assert len(ref["chosen"]) == 3 and all(len(c) for c in ref["chosen"])
    for got in _both_ranks(results, lambda r: r["loops"][loop]):
        np.testing.assert_array_equal(got["entered"], ref["entered"])
        np.testing.assert_array_equal(got["history"], ref["history"])
        for g, r in zip(got["chosen"], ref["chosen"], strict=True):
            np.testing.assert_array_equal(g, r)
        for g, r in zip(got["scores"], ref["scores"], strict=True):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-6)


def test_sharded_curriculum_records_the_whole_scoring_work(results: dict[str, Any]) -> None:
    ref = results["single"]["loops"]["mcdropout"]["score_samples"]
    assert sum(ref) > 0
    for got in _both_ranks(results, lambda r: r["loops"]["mcdropout"]["score_samples"]):
        assert got == ref


def test_rank_zero_selection_is_every_rank_pool(results: dict[str, Any]) -> None:
    """Rank 1's head drifted, so its own scores differ; the pools are still rank 0's."""
    r0, r1 = results[0]["drift"], results[1]["drift"]
    np.testing.assert_array_equal(r0["entered"], r1["entered"])
    np.testing.assert_array_equal(r0["history"], r1["history"])
    for a, b in zip(r0["chosen"], r1["chosen"], strict=True):
        np.testing.assert_array_equal(a, b)
    pairs = zip(r0["scores"], r1["scores"], strict=True)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in pairs)


def test_collectives_gather_in_rank_order(results: dict[str, Any]) -> None:
    for r in range(WORLD):
        got = results[r]["collectives"]
        assert results[r]["world"] == WORLD
        np.testing.assert_array_equal(
            got["rows"],
            np.concatenate([np.arange(3.0).reshape(1, 3), np.arange(6.0).reshape(2, 3) + 100]),
        )
        assert got["rows"].dtype == np.float64
        np.testing.assert_array_equal(got["empty"], [[7, 8]])
        assert got["empty"].dtype == np.int64 and got["empty"].shape == (1, 2)
        np.testing.assert_array_equal(got["flags"], [True, False, False, True, False, True])
        assert got["flags"].dtype == np.bool_
        np.testing.assert_array_equal(got["tensor"], [[0, 0], [1, 1], [1, 1]])
        np.testing.assert_array_equal(got["broadcast"], np.arange(4))
        assert got["object"] == {"rank": 0}


# -- a single process: Ranks is a no-op -------------------------------------------------------
@pytest.mark.parametrize("make", [Ranks, Ranks.local], ids=["Ranks()", "Ranks.local()"])
def test_ranks_without_a_group_are_a_no_op(make: Callable[[], Ranks]) -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    ranks = make()
    assert (ranks.rank, ranks.world, ranks.sharded, ranks.is_main) == (0, 1, False, True)
    assert ranks.device == torch.device("cpu")
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(ranks.gather_rows(rows), rows)
    np.testing.assert_array_equal(ranks.gather_rows(torch.from_numpy(rows)), rows)
    np.testing.assert_array_equal(ranks.shard(np.arange(9)), np.arange(9))
    assert ranks.bounds(9) == (0, 9)
    np.testing.assert_array_equal(ranks.broadcast(rows), rows)
    assert ranks.broadcast_object({"a": 1}) == {"a": 1}
    ranks.barrier()


def test_a_group_without_torch_distributed_is_refused() -> None:
    with pytest.raises(ValueError, match="not initialised"):
        Ranks(group=object())


@given(st.integers(0, 500), st.integers(1, 17))
def test_shard_bounds_is_numpy_array_split(n: int, world: int) -> None:
    parts = np.array_split(np.arange(n), world)
    for rank, part in enumerate(parts):
        lo, hi = shard_bounds(n, rank, world)
        np.testing.assert_array_equal(np.arange(lo, hi), part)
