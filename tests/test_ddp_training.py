"""Training under DDP (issue 10): two gloo processes on the CPU against one process.

One spawn of two ranks runs every distributed scenario and saves what each rank ends with;
the tests compare those files with each other and with the same work done here in one
process. The schedule itself (which rank reads which samples) is tested as pure functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset

from flexsample.datasets import build_dataset
from flexsample.datasets.base import Split
from flexsample.datasets.images import split_item
from flexsample.engine.distributed import shard_bounds
from flexsample.engine.errors import FlexsampleError
from flexsample.training.anchor_features import embed_features, pixel_features
from flexsample.training.data import SplitLoader, predict_probs, regroup
from flexsample.training.distributed import (
    epoch_share,
    keep_batch,
    local_permutation,
    rank_batches,
)
from flexsample.training.evaluate import evaluate
from flexsample.training.models import ContractClassifier, SmallCNN
from flexsample.training.trainer import TrainConfig, Trainer

from .conftest import record_reads

WORLD = 2
SUBSET = np.arange(0, 254, 2)  # 127 training samples: uneven shares and a trailing batch
# a short last global batch (fewer than 2 per rank): 4 x 32 + 2 and 4 x 32 + 3 (batch 32)
SHORT = {"two": np.arange(130), "three": np.arange(131)}
BN_SHORT = np.arange(102)  # 3 x 33 + 3 (batch 33), with batch norm, dropout and mixup
CPU = torch.device("cpu")


class Mlp(ContractClassifier):
    """No batch norm, no dropout: DDP and one process must train the same function."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)
        self.dropout_p = 0.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def bn_config() -> TrainConfig:
    return TrainConfig(epochs_per_round=1, epoch_budget=1, batch_size=33, mixup=0.2, seed=3)


def plain_config() -> TrainConfig:
    return TrainConfig(epochs_per_round=1, epoch_budget=1, batch_size=32, lr=1e-2, seed=5)


def fresh(cls: type[nn.Module], *args: object) -> nn.Module:
    torch.manual_seed(0)
    return cls(*args)


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        _scenarios(rank, Path(out))
    finally:
        dist.destroy_process_group()


def _scenarios(rank: int, out: Path) -> None:
    from flexsample.engine.distributed import Ranks
    from flexsample.training.ssl import ssl_weights

    ranks = Ranks()
    ds = build_dataset("digits-lt")
    # (a)/(b): batch norm, dropout and mixup; every read of the epoch recorded
    trainer = Trainer(
        fresh(SmallCNN, 10, 1, 8), ds.train, ds.val, 10, bn_config(), CPU, ranks=ranks
    )
    reads = record_reads(trainer)
    res = trainer.train_epoch(SUBSET, 0)
    val = trainer.validate()
    model = trainer.model
    loader = SplitLoader(ds.val, False, CPU)
    saved = {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "loss": res.loss,
        "reads": reads,
        "val": val,
        "probs": predict_probs(model, loader, 64, ranks=ranks),
        "metrics": evaluate(model, ds.val, CPU, batch_size=64, ranks=ranks),
        "embed": embed_features(model, ds.train, CPU, 50, ranks=ranks),
        "pixels": pixel_features(ds.train, 100, ranks=ranks),
    }
    # (e): no batch norm, no dropout, no mixup
    plain = Trainer(fresh(Mlp), ds.train, ds.val, 10, plain_config(), CPU, ranks=ranks)
    saved["plain_loss"] = plain.train_epoch(SUBSET, 0).loss
    saved["plain"] = {k: v.clone() for k, v in plain.model.state_dict().items()}
    # (g): a short last global batch trains as in one process (with stand-ins weighted 0)
    for name, subset in SHORT.items():
        short = Trainer(fresh(Mlp), ds.train, ds.val, 10, plain_config(), CPU, ranks=ranks)
        res = short.train_epoch(subset, 0)
        saved[f"short_{name}"] = {k: v.clone() for k, v in short.model.state_dict().items()}
        saved[f"short_{name}_result"] = (res.loss, res.extra["samples"])
    cnn = Trainer(fresh(SmallCNN, 10, 1, 8), ds.train, ds.val, 10, bn_config(), CPU, ranks=ranks)
    cnn_reads = record_reads(cnn)
    saved["bn_short_samples"] = cnn.train_epoch(BN_SHORT, 0).extra["samples"]
    saved["bn_short_reads"] = cnn_reads
    saved["bn_short"] = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    # --sync-bn is CUDA-only in PyTorch: on CPU one clear error, the model left as it was
    cnn = fresh(SmallCNN, 10, 1, 8)
    try:
        Trainer(cnn, ds.train, ds.val, 10, plain_config(), CPU, ranks=ranks, sync_bn=True)
    except FlexsampleError as exc:
        saved["sync_bn_error"] = str(exc)
    saved["sync_bn_untouched"] = type(cnn.features[1]) is nn.BatchNorm2d
    # (f): SSL pre-training under DDP, the cache written by rank 0 alone, then read back
    # (needs the ssl extra, lightly: without it the SSL test is skipped, the rest runs)
    import importlib.util

    if importlib.util.find_spec("lightly") is None:
        torch.save(saved, out / f"rank{rank}.pt")
        return
    small = build_dataset("digits-lt", imbalance_ratio=10.0)
    small.train = Split(small.train.labels[:70], small.train.ids[:70], small.train.in_memory[:70])
    opts = dict(
        backbone="small-cnn",
        seed=1,
        ssl_epochs=1,
        ssl_batch_size=16,
        cache_dir=out / "cache",
        ranks=ranks,
    )
    saved["ssl"] = ssl_weights(small, lambda: SmallCNN(10, 1, 8), **opts)
    saved["ssl_cached"] = ssl_weights(small, lambda: SmallCNN(10, 1, 8), **opts)
    saved["cache_files"] = sorted(p.name for p in (out / "cache").rglob("*") if p.is_file())
    torch.save(saved, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits-lt")


def _same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0 or not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ------------------------------------------------------------------ (a) identical ranks


def test_ddp_epoch_leaves_identical_weights_and_global_loss(ranks_out):
    r0, r1 = ranks_out
    _same_state(r0["state"], r1["state"])  # parameters and BN running statistics
    assert r0["loss"] == r1["loss"] and np.isfinite(r0["loss"])
    assert r0["val"] == r1["val"]
    # the model did train: it differs from its initialisation
    init = fresh(SmallCNN, 10, 1, 8).state_dict()
    assert not torch.equal(init["head.weight"], r0["state"]["head.weight"])


# ------------------------------------------------------------------ (b) batch schedule


def test_union_of_rank_reads_is_the_single_process_epoch(ranks_out, digits):
    cfg = bn_config()
    rng = np.random.default_rng([cfg.seed, 0, 0xDA7A])
    from flexsample.training.samplers import SAMPLERS

    order = SUBSET[SAMPLERS.get(cfg.sampler)(digits.train.labels[SUBSET], rng)]
    single = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    reads0, reads1 = ranks_out[0]["reads"], ranks_out[1]["reads"]
    assert len(reads0) == len(reads1) == len(single)  # 127 = 3 * 33 + 28: nothing skipped
    for one, a, b in zip(single, reads0, reads1, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b]), one)
        assert abs(len(a) - len(b)) <= 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), batch=st.integers(1, 70), world=st.integers(1, 6))
def test_rank_batches_partition_every_global_batch(n: int, batch: int, world: int) -> None:
    per_rank = [rank_batches(n, batch, r, world) for r in range(world)]
    single = rank_batches(n, batch, 0, 1, skip_small=False)
    assert len({len(p) for p in per_rank}) == 1  # every rank makes the same number of steps
    # the ranks train on exactly the batches one process trains on: all but a lone last sample
    kept = [g.start for g in single if not (g.size < 2 and g.start > 0)]
    assert kept == [g.start for g in single if keep_batch(g.size, g.start == 0, world)]
    assert [b.start for b in per_rank[0]] == kept == [b.start for b in rank_batches(n, batch)]
    for i, g in enumerate(g for g in single if g.start in kept):
        shares = [p[i] for p in per_rank]
        assert all(s.start == g.start and s.size == g.size for s in shares)
        real = [s for s in shares if s.local > 0]
        assert real == shares[: len(real)] and real[0].lo == g.start  # ranks 0.. in order
        assert real[-1].hi == g.start + g.size
        assert all(a.hi == b.lo for a, b in zip(real, real[1:], strict=False))
        if g.size >= 2:
            assert all(s.local >= 2 for s in real)  # no rank trains on a lone sample
        for s in shares[len(real) :]:  # stand-ins: the batch's first samples, weighted 0
            assert s.read == (g.start, g.start + min(2, g.size))


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 80), world=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_local_permutations_come_from_the_global_one(size: int, world: int, seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(size)
    for r in range(world):
        lo, hi = shard_bounds(size, r, world)
        local = local_permutation(perm, lo, hi)
        assert sorted(local.tolist()) == list(range(hi - lo))
    np.testing.assert_array_equal(local_permutation(perm, 0, size), perm)


class _Files(Dataset):
    """A stand-in for a file-backed split: the item is (index, augmentation seed)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, seed = split_item(item)
        return torch.tensor([index, -1 if seed is None else seed % 1_000_003]), index % 3


class _FileSplit(Split):
    def torch_dataset(self, train: bool) -> Dataset:
        return _Files(len(self))


@pytest.mark.parametrize("world", [2, 3])
def test_file_backed_shares_read_and_augment_as_one_process(world: int) -> None:
    n = 50
    split = _FileSplit(np.arange(n) % 3, [str(i) for i in range(n)])
    order = np.random.default_rng(0).choice(n, size=61)  # repeats, as re-sampling draws
    key = (7, 2)
    one = [x for x, _ in SplitLoader(split, True, CPU)(order, 8, key)]
    parts, shares = [], []
    for r in range(world):
        share = epoch_share(order, 8, r, world, key)
        loaded = SplitLoader(split, True, CPU)(share.indices, share.step_size, key, share.seeds)
        read = [x for x, _ in regroup(loaded, [b.reads for b in share.batches])]
        assert [len(x) for x in read] == [b.reads for b in share.batches]
        parts.append(read)
        shares.append(share.batches)
    kept = [b.start // 8 for b in shares[0]]
    assert kept == list(range(len(one)))  # 61 = 7 x 8 + 5: the short last batch kept too
    for i, g in enumerate(kept):
        real = [p[i] for p, s in zip(parts, shares, strict=True) if s[i].local]
        torch.testing.assert_close(torch.cat(real), one[g], rtol=0, atol=0)
        for p, s in zip(parts, shares, strict=True):
            if not s[i].local:  # a stand-in (weight 0): the batch's first samples
                torch.testing.assert_close(p[i], one[g][: s[i].stand_in], rtol=0, atol=0)


@pytest.mark.parametrize("in_memory", [True, False])
def test_ssl_view_shares_are_the_single_process_views(in_memory: bool) -> None:
    """SSL under DDP: each rank's views are its share of the one-process views, batch by
    batch (in memory: the generator advances as in one process; files: seeded per image)."""
    from types import SimpleNamespace

    from flexsample.training.ssl import _view_pairs

    n, world, bs = 45, 2, 16
    if in_memory:
        x = torch.arange(n * 64, dtype=torch.float32).reshape(n, 1, 8, 8) / 100
        split = Split(np.arange(n) % 3, [str(i) for i in range(n)], in_memory=x)
    else:
        split = _FileSplit(np.arange(n) % 3, [str(i) for i in range(n)])
    order = np.random.default_rng(1).permutation(n)

    def views(ranks):
        gen = torch.Generator().manual_seed(9)
        return list(_view_pairs(split, order, bs, CPU, gen, 0, (3, 0), ranks))

    one = views(None)
    shares = [views(SimpleNamespace(rank=r, world=world, sharded=True)) for r in range(world)]
    for r, share in enumerate(shares):
        for v1, v2, b in share:
            g = next(i for i, (_, _, o) in enumerate(one) if o.start == b.start)
            lo, hi = b.lo - b.start, b.hi - b.start
            torch.testing.assert_close(v1, one[g][0][lo:hi], rtol=0, atol=0)
            torch.testing.assert_close(v2, one[g][1][lo:hi], rtol=0, atol=0)
            assert b.local == len(v1) and b.lo == b.start + shard_bounds(b.size, r, world)[0]
    assert len(shares[0]) == len(shares[1]) == 3  # 45 = 16 + 16 + 13, every batch kept


# ------------------------------------------------------------------ (c) sharded evaluation


def test_sharded_evaluation_equals_one_process(ranks_out, digits):
    r0, r1 = ranks_out
    model = SmallCNN(10, 1, 8)
    model.load_state_dict(r0["state"])
    probs = predict_probs(model, SplitLoader(digits.val, False, CPU), 64)
    for r in (r0, r1):
        assert r["probs"].shape == probs.shape
        np.testing.assert_allclose(r["probs"], probs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(r["probs"].argmax(1), probs.argmax(1))
    metrics = evaluate(model, digits.val, CPU, batch_size=64)
    for key in ("balanced_accuracy", "accuracy"):
        if key in metrics:
            assert r0["metrics"][key] == pytest.approx(metrics[key], abs=1e-9)
            assert r1["metrics"][key] == r0["metrics"][key]
    trainer = Trainer(model, digits.train, digits.val, 10, bn_config(), CPU)
    trainer.last_counts = np.bincount(digits.train.labels[SUBSET], minlength=10)
    mean, recall = trainer.validate()
    assert r0["val"][0] == pytest.approx(mean, abs=1e-9)
    np.testing.assert_allclose(r0["val"][1], recall, atol=1e-9)


# ------------------------------------------------------------------ (d) sharded features


def test_sharded_features_equal_one_process(ranks_out, digits):
    r0, r1 = ranks_out
    model = SmallCNN(10, 1, 8)
    model.load_state_dict(r0["state"])
    emb = embed_features(model, digits.train, CPU, 50)
    pix = pixel_features(digits.train, 100)
    for r in (r0, r1):
        assert r["embed"].shape == emb.shape == (len(digits.train), 32)
        np.testing.assert_allclose(r["embed"], emb, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(r["pixels"], pix)


# ------------------------------------------------------------------ (e) DDP vs one process


def test_ddp_epoch_matches_one_process_epoch(ranks_out, digits):
    """Same global batches, loss scaled by each rank's share: the averaged gradient is the
    global-batch gradient, so weights agree up to float summation order (atol 1e-6)."""
    trainer = Trainer(fresh(Mlp), digits.train, digits.val, 10, plain_config(), CPU)
    loss = trainer.train_epoch(SUBSET, 0).loss
    single = trainer.model.state_dict()
    for r in ranks_out:
        _same_state(r["plain"], single, atol=1e-6)  # measured: 3e-8
        assert r["plain_loss"] == pytest.approx(loss, rel=1e-6)
    init = fresh(Mlp).state_dict()
    assert (single["head.weight"] - init["head.weight"]).abs().max() > 1e-2  # it moved


@pytest.mark.parametrize("name", sorted(SHORT))
def test_short_last_batch_trains_as_one_process(ranks_out, digits, name: str) -> None:
    """A last global batch of 2 or 3 samples on 2 ranks (fewer than 2 per rank): one process
    trains on it, so the ranks do too (one rank takes it, the other weighs a stand-in 0)."""
    subset = SHORT[name]
    trainer = Trainer(fresh(Mlp), digits.train, digits.val, 10, plain_config(), CPU)
    res = trainer.train_epoch(subset, 0)
    assert res.extra["samples"] == len(subset)  # 130 or 131: the short batch trained
    for r in ranks_out:
        _same_state(r[f"short_{name}"], trainer.model.state_dict(), atol=1e-6)
        loss, samples = r[f"short_{name}_result"]
        assert samples == len(subset) and loss == pytest.approx(res.loss, rel=1e-6)


def test_short_last_batch_with_batch_norm_and_mixup(ranks_out, digits) -> None:
    r0, r1 = ranks_out
    _same_state(r0["bn_short"], r1["bn_short"])
    assert r0["bn_short_samples"] == r1["bn_short_samples"] == len(BN_SHORT)
    cfg = bn_config()
    from flexsample.training.samplers import SAMPLERS

    rng = np.random.default_rng([cfg.seed, 0, 0xDA7A])
    order = BN_SHORT[SAMPLERS.get(cfg.sampler)(digits.train.labels[BN_SHORT], rng)]
    single = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    reads0, reads1 = r0["bn_short_reads"], r1["bn_short_reads"]
    assert [len(b) for b in single] == [33, 33, 33, 3]
    for one, a, b in zip(single[:3], reads0, reads1, strict=False):
        np.testing.assert_array_equal(np.concatenate([a, b]), one)
    # the short batch: rank 0 reads all 3, rank 1 the first 2 as its stand-in (weight 0)
    np.testing.assert_array_equal(np.concatenate(reads0[3:]), single[3])
    np.testing.assert_array_equal(np.concatenate(reads1[3:]), single[3][:2])


def test_sync_bn_on_cpu_is_one_clear_error(ranks_out):
    for r in ranks_out:
        assert "--sync-bn needs CUDA" in r["sync_bn_error"]
        assert "\n" not in r["sync_bn_error"]
        assert r["sync_bn_untouched"]


# ------------------------------------------------------------------ (f) SSL under DDP


def test_ssl_under_ddp_leaves_identical_weights_and_one_cache(ranks_out):
    pytest.importorskip("lightly", reason="the ssl extra (lightly) is not installed")
    r0, r1 = ranks_out
    _same_state(r0["ssl"], r1["ssl"])  # backbone and BN statistics alike on both ranks
    _same_state(r0["ssl_cached"], r0["ssl"])  # rank 0 read the cache, rank 1 received it
    _same_state(r1["ssl_cached"], r0["ssl"])
    assert len(r0["cache_files"]) == 1 and r0["cache_files"][0].endswith(".pt")  # no temp
    torch.manual_seed(1)  # ssl_weights builds the model under the run seed
    init = SmallCNN(10, 1, 8).state_dict()
    assert "head.weight" not in r0["ssl"]
    assert not torch.equal(init["features.0.weight"], r0["ssl"]["features.0.weight"])
