"""Issue 13's training flags, checked by hand: `--budget samples` (every epoch as many samples as
the full training set, the sampler's order over the subset repeated), `--restart
fresh|warm|none` (the optimizer and cosine at each round start or query, resume included),
`--lr-subset-scale` (peak rate x (subset / full)^Q) and the bench's `--budgets` axis."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.datasets.base import Split
from flexsample.engine.errors import FlexsampleError
from flexsample.training.distributed import epoch_share
from flexsample.training.samplers import class_balanced_sampler, instance_sampler
from flexsample.training.trainer import (
    ORDER_SALT,
    TrainConfig,
    Trainer,
    epoch_order,
    subset_lr_scale,
)
from flexsample.workflows.bench import CELL_FILE, Cell, config_hash, plan_cells
from flexsample.workflows.config import RunConfig
from flexsample.workflows.outputs import RESULTS

from .conftest import one_error_line, record_reads

CPU = torch.device("cpu")
FULL = 256  # the toy training set
LR = 0.01
SQ2, SQ3, SQ6 = math.sqrt(2), math.sqrt(3), math.sqrt(6)


def toy_split() -> Split:
    """256 tiny in-memory 'images' of 4 classes (i % 4): the same tensors in every process."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(FULL, 1, 2, 2, generator=gen)
    labels = np.arange(FULL) % 4
    return Split(labels, [f"s{i}" for i in range(FULL)], in_memory=x)


def toy_trainer(split: Split | None = None, ranks=None, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))  # no dropout, no batch norm
    split = split if split is not None else toy_split()
    options = {"epochs_per_round": 4, "epoch_budget": 12, "lr": LR, "batch_size": 64, **cfg}
    return Trainer(model, split, split, 4, TrainConfig(**options), CPU, ranks=ranks)


# --- --budget: the epoch order ----------------------------------------------------------------

SUBSET = np.arange(10) * 3 + 1  # dataset indices 1, 4, ..., 28
# instance order of SUBSET for (seed 3, epoch 2): default_rng([3, 2, 0xDA7A]).permutation(10)
EXPECTED = [22, 4, 28, 1, 25, 19, 16, 13, 7, 10]


def test_epochs_budget_order_is_the_fixed_seeded_order():
    labels = np.arange(FULL)[SUBSET] % 4
    for samples in (None, len(SUBSET)):  # one pass: both budgets read the same order
        rng = np.random.default_rng([3, 2, ORDER_SALT])
        got = epoch_order(SUBSET, labels, instance_sampler, rng, samples, 3, 2)
        assert got.tolist() == EXPECTED
    trainer = toy_trainer(seed=3)
    reads = record_reads(trainer)
    res = trainer.train_epoch(SUBSET, 2)
    assert np.concatenate(reads).tolist() == EXPECTED
    assert res.extra["samples"] == 10


@pytest.mark.parametrize("n", [7, 50, 100, 255, 256])
def test_samples_budget_reads_the_full_size_and_covers_the_subset_floor_or_ceil(n):
    rng = np.random.default_rng(n)
    subset = np.sort(rng.choice(FULL, size=n, replace=False))
    trainer = toy_trainer(samples_per_epoch=FULL, seed=1)
    reads = record_reads(trainer)
    res = trainer.train_epoch(subset, 5)
    order = np.concatenate(reads)
    assert res.extra["samples"] == len(order) == FULL  # 4 batches of 64, nothing skipped
    assert set(order.tolist()) <= set(subset.tolist())
    times = np.bincount(order, minlength=FULL)[subset]
    assert set(times.tolist()) <= {FULL // n, -(-FULL // n)}
    assert (times > FULL // n).sum() == FULL % n  # the cut last pass: FULL mod n samples
    # repetition k is its own seeded draw, a pure function of (seed, epoch, k)
    first = subset[np.random.default_rng([1, 5, ORDER_SALT]).permutation(n)]
    assert np.array_equal(order[:n], first)
    if n < FULL:
        second = subset[np.random.default_rng([1, 5, ORDER_SALT, 1]).permutation(n)]
        assert np.array_equal(order[n : 2 * n], second[: FULL - n])


def test_a_skipped_lone_trailing_sample_is_not_counted():
    trainer = toy_trainer(samples_per_epoch=FULL, batch_size=51)  # 256 = 5 x 51 + 1
    reads = record_reads(trainer)
    res = trainer.train_epoch(np.arange(40), 0)
    assert res.extra["samples"] == sum(len(r) for r in reads) == 255


def test_class_balanced_draws_repeat_with_their_own_generators():
    subset = np.arange(52) + 100
    labels = np.repeat([0, 1, 2], [40, 10, 2])  # a long-tailed subset
    rng = np.random.default_rng([4, 0, ORDER_SALT])
    order = epoch_order(subset, labels, class_balanced_sampler, rng, 30_000, 4, 0)
    assert len(order) == 30_000
    share = np.bincount(labels[order - 100], minlength=3) / 30_000
    assert np.allclose(share, 1 / 3, atol=0.02)  # balanced whatever the subset's counts
    again = class_balanced_sampler(labels, np.random.default_rng([4, 0, ORDER_SALT]))
    assert np.array_equal(order[:52], subset[again])
    third = class_balanced_sampler(labels, np.random.default_rng([4, 0, ORDER_SALT, 2]))
    assert np.array_equal(order[104:156], subset[third])


def test_a_longer_order_is_cut_into_rank_shares_like_any_global_order():
    subset = np.arange(30)
    order = epoch_order(subset, subset % 4, instance_sampler, np.random.default_rng(0), 100, 0, 0)
    shares = [epoch_share(order, 32, r, 2) for r in range(2)]
    for step in range(4):  # batches of 32, 32, 32, 4: every global batch split in two
        b0, b1 = shares[0].batches[step], shares[1].batches[step]
        assert (b0.lo, b0.hi, b1.lo, b1.hi) == (b0.start, b1.lo, b1.lo, b0.start + b0.size)
    reads = [s.indices for s in shares]
    glued = np.concatenate(
        [np.r_[reads[0][i * 16 : (i + 1) * 16], reads[1][i * 16 : (i + 1) * 16]] for i in range(4)]
    )
    assert np.array_equal(glued, order)


def _ddp_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from flexsample.engine.distributed import Ranks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        trainer = toy_trainer(ranks=Ranks(), samples_per_epoch=FULL, seed=2)
        reads = record_reads(trainer)
        res = trainer.train_epoch(np.arange(0, 100, 2), 3)
        torch.save(
            {"reads": reads, "samples": res.extra["samples"], "state": trainer.model.state_dict()},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_samples_budget_under_ddp_reads_the_single_process_order(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = toy_trainer(samples_per_epoch=FULL, seed=2)
    reads = record_reads(single)
    res = single.train_epoch(np.arange(0, 100, 2), 3)
    assert res.extra["samples"] == ranks[0]["samples"] == ranks[1]["samples"] == FULL
    for step, batch in enumerate(reads):  # rank 0's share then rank 1's: the global batch
        glued = np.r_[ranks[0]["reads"][step], ranks[1]["reads"][step]]
        assert np.array_equal(glued, batch)
    for key, value in single.model.state_dict().items():  # DDP trains the same function
        assert torch.allclose(ranks[0]["state"][key], value, atol=1e-6)


# --- --restart and --lr-subset-scale ----------------------------------------------------------

# the toy schedule: 3 rounds x 4 epochs, a query in round 1 before epoch 6 (2 epochs left)
CALLS = {0: (0, 4), 4: (1, 4), 6: (1, 2), 8: (2, 4)}
SIZES = [64] * 4 + [128] * 2 + [192] * 2 + [256] * 4  # the subset at each epoch
C4 = [1.0, (2 + SQ2) / 4, 0.5, (2 - SQ2) / 4]  # (1 + cos(pi k / 4)) / 2
C2 = [1.0, 0.5]
COS12 = [
    1,
    (SQ6 + SQ2) / 4,
    SQ3 / 2,
    SQ2 / 2,
    0.5,
    (SQ6 - SQ2) / 4,
    0,
    -(SQ6 - SQ2) / 4,
    -0.5,
    -SQ2 / 2,
    -SQ3 / 2,
    -(SQ6 + SQ2) / 4,
]  # cos(pi e / 12)
C12 = [(1 + c) / 2 for c in COS12]
ROUNDS = C4 + C4[:2] + C2 + C4  # fresh and warm: a cosine per start_round


def drive(trainer: Trainer, start: int = 0, stop: int = 12) -> list[float]:
    """The loop's calls over epochs [start, stop): start_round where the schedule says."""
    lrs = []
    for epoch in range(start, stop):
        if epoch in CALLS:
            trainer.start_round(*CALLS[epoch])
        res = trainer.train_epoch(np.arange(SIZES[epoch]), epoch)
        lrs.append(res.extra["lr"])
    return lrs


@pytest.mark.parametrize(
    ("restart", "factors"),
    [("fresh", ROUNDS), ("warm", ROUNDS), ("none", C12)],
)
def test_restart_modes_give_the_hand_computed_lr_sequence(restart, factors):
    trainer = toy_trainer(restart=restart)
    assert drive(trainer) == pytest.approx([LR * f for f in factors], rel=1e-12, abs=1e-15)


def test_warm_and_none_keep_the_adamw_moments_fresh_does_not():
    steps_per_epoch = [s // 64 for s in SIZES]  # batch 64: 1, 2, 3 or 4 steps
    for restart, kept in (("fresh", False), ("warm", True), ("none", True)):
        trainer = toy_trainer(restart=restart)
        drive(trainer, 0, 9)  # through the first epoch of round 2
        param = next(trainer.model.parameters())
        step = float(trainer.optimizer.state[param]["step"])
        assert step == (sum(steps_per_epoch[:9]) if kept else steps_per_epoch[8]), restart


def test_lr_subset_scale_values():
    assert subset_lr_scale(64, 256, 0.5) == 0.5
    assert subset_lr_scale(64, 256, 1.0) == 0.25
    assert subset_lr_scale(192, 256, 0.5) == pytest.approx(SQ3 / 2)
    assert subset_lr_scale(7, 256, 0.0) == 1.0 and subset_lr_scale(256, 256, 2.0) == 1.0
    sqrt = {64: 0.5, 128: SQ2 / 2, 192: SQ3 / 2, 256: 1.0}
    # fresh: a round's peak is scaled by its subset when it starts
    got = drive(toy_trainer(lr_subset_scale=0.5))
    want = [LR * f * sqrt[s] for f, s in zip(ROUNDS, SIZES, strict=True)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    # none: the one cosine, each epoch scaled by its subset (linear, Q = 1)
    got = drive(toy_trainer(restart="none", lr_subset_scale=1.0))
    want = [LR * f * s / FULL for f, s in zip(C12, SIZES, strict=True)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("restart", ["fresh", "warm", "none"])
@pytest.mark.parametrize("cut", [6, 7])  # mid-round before the query, and after it
def test_resume_mid_round_continues_the_same_lr_sequence_and_weights(restart, cut):
    whole = toy_trainer(restart=restart, lr_subset_scale=0.5)
    lrs = drive(whole)
    first = toy_trainer(restart=restart, lr_subset_scale=0.5)
    head = drive(first, 0, cut)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = toy_trainer(restart=restart, lr_subset_scale=0.5)
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(1.0)  # other weights: the checkpoint must replace them
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert head + drive(resumed, cut, 12) == lrs
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_bad_train_config_values_are_refused():
    with pytest.raises(FlexsampleError, match="unknown restart 'hot'"):
        TrainConfig(epochs_per_round=1, epoch_budget=1, restart="hot")
    with pytest.raises(FlexsampleError, match="lr_subset_scale"):
        TrainConfig(epochs_per_round=1, epoch_budget=1, lr_subset_scale=-1)
    with pytest.raises(FlexsampleError, match="samples_per_epoch"):
        TrainConfig(epochs_per_round=1, epoch_budget=1, samples_per_epoch=0)


# --- the run flags and the bench axis ---------------------------------------------------------


def test_run_help_shows_the_flags_and_bad_values_exit_2(cli):
    assert RunConfig().budget == "epochs" and RunConfig().restart == "fresh"
    assert RunConfig().lr_subset_scale == 0.0
    res = cli("run", "--help")
    assert res.exit_code == 0
    for flag in ("--budget", "--restart", "--lr-subset-scale"):
        assert flag in res.output, flag
    assert "--budget" in one_error_line(cli("run", "--budget", "bogus"))
    assert "--restart" in one_error_line(cli("run", "--restart", "hot"))
    assert "0 <= x <= 4" in one_error_line(cli("run", "--lr-subset-scale", "-1"))
    assert "unknown budget 'bogus' in --budgets" in one_error_line(
        cli("bench", "--budgets", "epochs,bogus", "--out", "/nonexistent/x")
    )


def test_budgets_axis_expands_into_cells(tmp_path):
    base = RunConfig(rounds=2)
    cells = plan_cells(
        base, tmp_path, ["random"], ["linear"], None, None, [0, 1], ["ce"], ["epochs", "samples"]
    )
    got = sorted((c.config.budget, c.method, c.config.seed) for c in cells)
    assert got == sorted(
        (b, m, s)
        for b in ("epochs", "samples")
        for m in ("random/linear", "baseline:ce")
        for s in (0, 1)
    )
    for cell in cells:
        group = cell.out.parent.parent.name
        assert group == (
            "digits-lt-r100" if cell.config.budget == "epochs" else "digits-lt-r100-samples"
        )
        assert cell.config.rounds == 2  # the base flags still apply
    assert len({c.key for c in cells}) == 8
    # without the axis: the base's budget, folders as before
    plain = plan_cells(RunConfig(budget="samples"), tmp_path, None, None, None, None, None, None)
    assert [c.config.budget for c in plain] == ["samples"]
    with pytest.raises(FlexsampleError, match="unknown budget 'both'"):
        plan_cells(base, tmp_path, None, None, None, None, None, None, ["both"])


def _cell(out: Path, method: str, budget: str | None, seed: int, acc: float) -> Cell:
    config = {
        "dataset": "d",
        "dataset_options": {"imbalance_ratio": 100.0},
        "seed": seed,
        "policy": "full" if method.startswith("baseline:") else "linear",
    }
    if budget is not None:  # None: a cell from before --budget
        config["budget"] = budget
    key = config_hash(config, "0.1.0")
    name = f"seed{seed}-{key[:10]}"  # the folder its cell.json names
    path = out / f"d-r100-{budget}" / method.replace(":", "-").replace("/", "-") / name
    path.mkdir(parents=True)
    (path / RESULTS).write_text(json.dumps({"test": {"balanced_accuracy": acc}}))
    doc = {
        "format": 1,
        "status": "finished",
        "method": method,
        "baseline": method.startswith("baseline:"),
        "config_hash": key,
        "flexsample_version": "0.1.0",
        "config": config,
        "wall_s": 1.0,
    }
    (path / CELL_FILE).write_text(json.dumps(doc))
    return Cell(method, doc["baseline"], RunConfig(), path, key)


def test_summary_has_a_budget_column_and_a_table_per_budget(tmp_path):
    from flexsample.workflows.bench_summary import CSV_COLUMNS, write_summary

    cells = [
        _cell(tmp_path, "entropy/linear", None, 0, 0.70),  # before --budget: epochs
        _cell(tmp_path, "entropy/linear", "samples", 0, 0.90),
        _cell(tmp_path, "baseline:ce", "epochs", 0, 0.80),
        _cell(tmp_path, "baseline:ce", "samples", 0, 0.80),
    ]
    write_summary(tmp_path, cells, "flexsample bench --budgets epochs,samples")
    with open(tmp_path / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS and "budget" in CSV_COLUMNS
    assert sorted((r["method"], r["budget"]) for r in rows) == [
        ("baseline:ce", "epochs"),
        ("baseline:ce", "samples"),
        ("entropy/linear", "epochs"),
        ("entropy/linear", "samples"),
    ]
    md = (tmp_path / "summary.md").read_text()
    epochs = md.index("## d, r = 100, budget = epochs")
    samples = md.index("## d, r = 100, budget = samples")
    assert epochs < samples
    # each budget ranked on its own: the curriculum is 2nd in epochs, 1st in samples
    assert "| 1 | baseline:ce ★ | 1 | 80.0 |" in md[epochs:samples]
    assert "| 2 | entropy/linear | 1 | 70.0 |" in md[epochs:samples]
    assert "| 1 | entropy/linear | 1 | 90.0 |" in md[samples:]
