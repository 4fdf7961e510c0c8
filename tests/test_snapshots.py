"""--mc-source snapshots: MC draws from the best weights of the last rounds (a snapshot
ensemble), checked against a hand-built ensemble; the first-query rule; T and trimming;
determinism; resume equality; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine import (
    Curriculum,
    EpochResult,
    Estimator,
    Pool,
    get_allocation,
    get_policy,
    tensor_inputs,
)
from flexsample.engine.checkpoint import load_checkpoint
from flexsample.engine.context import ScoringContext
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.scoring import score_candidates
from flexsample.engine.snapshots import SnapshotKeeper, cpu_state
from flexsample.estimators import build_estimator
from flexsample.estimators import functional as F
from flexsample.training.models import adapt_model

from .conftest import one_error_line


def small_model(seed: int) -> nn.Module:
    """A contract model with a BatchNorm, so buffers are part of what a snapshot holds."""
    torch.manual_seed(seed)
    emb = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    model = adapt_model(emb, nn.Linear(8, 3), 0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def hand_built(states, x: torch.Tensor) -> torch.Tensor:
    """(S, n, C): each saved state loaded into a fresh model, its eval-mode softmax outputs."""
    out = []
    for state in states:
        m = small_model(99)
        m.load_state_dict(state)
        m.eval()
        with torch.no_grad():
            out.append(torch.softmax(m.head(m.embed(x)), dim=-1))
    return torch.stack(out)


def context(model, x, states, **kw) -> ScoringContext:
    labels = np.arange(len(x)) % 3
    return ScoringContext(
        model, tensor_inputs(x), labels, seed=0, step=1, batch_size=16, snapshots=states, **kw
    )


# -- the draws ------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["bald", "entropy", "variation-ratio", "std"])
def test_snapshot_draws_equal_a_hand_built_ensemble(score):
    states = [cpu_state(small_model(s)) for s in (1, 2, 3)]
    model = small_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(5))
    cand = np.arange(1, 50, 2)
    ctx = context(model, x, states)
    # mc_samples=20 and mode full are ignored: T is the number of snapshots
    got = torch.cat([p for _, p in ctx.iter_mc(cand, 20, "full")], dim=1)
    ref = hand_built(states, x[cand])
    assert got.shape == (3, len(cand), 3) and ctx.mc_draws(20) == 3
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    est = build_estimator("mcdropout", mc_samples=20, mc_score=score)
    scores = score_candidates(est, context(model, x, states), cand)
    np.testing.assert_allclose(scores, F.MC_SCORES[score](ref).numpy(), atol=1e-6)
    # the scored model is untouched, and `features` / `probs` stay the current model's
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        own = torch.softmax(model.head(model.embed(x[cand])), -1).numpy()
    full = context(model, x, states)
    np.testing.assert_allclose(full.probs(cand), own, atol=1e-6)


def test_info_density_reads_the_snapshot_draws():
    states = [cpu_state(small_model(s)) for s in (1, 2)]
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(6))
    cand = np.arange(0, 40, 3)
    est = build_estimator("info-density", mc_samples=7, density_beta=0.0, knn=3)
    got = score_candidates(est, context(small_model(0), x, states), cand)
    np.testing.assert_allclose(got, F.bald(hand_built(states, x[cand])).numpy(), atol=1e-6)


def test_identical_members_give_zero_bald_and_the_models_entropy():
    model = small_model(0)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(7))
    cand = np.arange(30)
    same = [model.state_dict(), cpu_state(model)]
    bald = score_candidates(build_estimator("mcdropout"), context(model, x, same), cand)
    assert (bald == 0.0).all()
    ent = score_candidates(
        build_estimator("mcdropout", mc_score="entropy"), context(model, x, same), cand
    )
    ctx = context(model, x, same)
    np.testing.assert_allclose(ent, F.entropy(torch.from_numpy(ctx.probs(cand))), atol=1e-6)


def test_fewer_than_two_members_or_bad_options_are_refused():
    model = small_model(0)
    with pytest.raises(FlexsampleError, match="at least 2 members, got 1"):
        context(model, torch.zeros(4, 4), [cpu_state(model)])
    with pytest.raises(FlexsampleError, match="--snapshots must be an integer >= 2, got 1"):
        SnapshotKeeper(1)
    with pytest.raises(FlexsampleError, match="unknown --mc-source 'ensemble'.*dropout"):
        make_loop(mc_source="ensemble")
    broken = {k: v for k, v in cpu_state(model).items() if "running_var" not in k}
    with pytest.raises(FlexsampleError, match="snapshot 1 has no weights for .*running_var"):
        list(context(model, torch.zeros(4, 4), [cpu_state(model), broken]).iter_mc(np.arange(4), 2))


# -- which weights are kept -------------------------------------------------------------------
def marked(value: float) -> nn.Module:
    """A model whose head bias is `value`: which epoch's weights a member holds is readable."""
    model = small_model(0)
    with torch.no_grad():
        model.head.bias.fill_(value)
    return model


def tags(members) -> list[float]:
    return [float(m["head.bias"][0]) for m in members]


def test_keeps_the_best_of_each_of_the_last_S_rounds():
    keeper = SnapshotKeeper(2)
    accs = [0.5, 0.4, 0.3, 0.6, 0.7, 0.7, 0.2, 0.1]  # 4 rounds of 2 epochs
    for epoch, acc in enumerate(accs):
        keeper.end_epoch(epoch // 2, acc, marked(epoch), round_done=epoch % 2 == 1)
    assert [r for r, _ in keeper.rounds] == [2, 3]  # only the last S = 2 rounds
    assert tags(keeper.members(marked(99))) == [4.0, 6.0]  # first best of a tie kept


def test_first_query_rule():
    keeper = SnapshotKeeper(3)
    now = marked(99)
    assert tags(keeper.members(now)) == [99.0, 99.0]  # nothing trained: the current weights
    keeper.end_epoch(0, 0.5, marked(0), round_done=False)
    assert tags(keeper.members(now)) == [0.0, 99.0]  # round 0's best so far, current weights
    keeper.end_epoch(0, 0.4, marked(1), round_done=True)
    # the first query of a round schedule: round 0's best and the current (= its last) weights
    assert tags(keeper.members(marked(1))) == [0.0, 1.0]
    keeper.end_epoch(1, 0.1, marked(2), round_done=False)
    assert tags(keeper.members(now)) == [0.0, 2.0]  # mid round 1: its best so far joins
    keeper.end_epoch(1, 0.2, marked(3), round_done=True)
    assert tags(keeper.members(now)) == [0.0, 3.0]  # two complete rounds: no top-up


# -- the loop ---------------------------------------------------------------------------------
class DriftingLearner:
    """Each epoch moves the weights by noise seeded by the epoch; validation follows a script.

    Its state holds the weights, so a resumed run continues from the same model."""

    def __init__(self, accs):
        self.model = small_model(0)
        self.accs = list(accs)
        self.epoch = -1
        self.after_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def start_round(self, round_index, num_epochs):
        pass

    def train_epoch(self, indices, epoch):
        g = torch.Generator().manual_seed(1000 + epoch)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        self.epoch = epoch
        self.after_epoch[epoch] = cpu_state(self.model)
        return EpochResult(loss=1.0, seconds=0.01)

    def validate(self):
        acc = self.accs[self.epoch]
        return acc, [acc] * 3

    def state_dict(self):
        return {"model": cpu_state(self.model), "epoch": self.epoch}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])


class Spy(Estimator):
    """BALD through ctx.iter_mc, recording each query's step, T and draws."""

    name = "spy"
    needs = frozenset({"mc"})

    def __init__(self):
        self.seen = []

    def score(self, ctx, candidates):
        probs = torch.cat([p for _, p in ctx.iter_mc(candidates, 20)], dim=1)
        self.seen.append((ctx.step, ctx.mc_draws(20), candidates.copy(), probs.clone()))
        return F.bald(probs).numpy()


# round r = epochs 2r, 2r + 1; best epochs: 0 (round 0), 3, 4 (a tie), 6
ACCS = [0.3, 0.2, 0.3, 0.5, 0.6, 0.6, 0.7, 0.1, 0.2, 0.3]
BEST_OF_ROUND = [0, 3, 4, 6]
X = torch.as_tensor(np.random.default_rng(0).normal(size=(48, 4)), dtype=torch.float32)


def make_loop(snapshots=2, checkpoint_dir=None, mc_source="snapshots"):
    labels = np.repeat([0, 1, 2], [30, 12, 6])
    learner = DriftingLearner(ACCS)
    spy = Spy()
    loop = Curriculum(
        Pool(labels, 3),
        get_policy("linear"),
        get_allocation("proportional"),
        spy,
        learner,
        tensor_inputs(X),
        rounds=5,
        epochs_per_round=2,
        seed=0,
        score_batch_size=16,
        checkpoint_dir=checkpoint_dir,
        mc_source=mc_source,
        snapshots=snapshots,
    )
    loop.start(np.concatenate([np.flatnonzero(labels == c)[:6] for c in range(3)]))
    return loop, learner, spy


@pytest.mark.parametrize(("snapshots", "draws"), [(2, [2, 2, 2]), (3, [2, 2, 3])])
def test_loop_scores_with_the_last_rounds_best_weights(snapshots, draws):
    loop, learner, spy = make_loop(snapshots)
    loop.run()
    # queries before rounds 1, 2, 3 score (round 4 takes everything left without scoring)
    assert [(s[0], s[1]) for s in spy.seen] == list(zip([1, 2, 3], draws, strict=True))
    for step, _, cand, probs in spy.seen:
        done = BEST_OF_ROUND[:step][-snapshots:]  # best epochs of the completed rounds kept
        states = [learner.after_epoch[e] for e in done]
        if len(states) < 2:  # first query: round 0's best and its last (current) weights
            states.append(learner.after_epoch[2 * step - 1])
        torch.testing.assert_close(probs, hand_built(states, X[cand]), atol=1e-6, rtol=0)


def test_same_seed_same_scores_and_selection():
    a, _, spy_a = make_loop()
    a.run()
    b, _, spy_b = make_loop()
    b.run()
    assert np.array_equal(a.pool.entered, b.pool.entered)
    for sa, sb in zip(spy_a.seen, spy_b.seen, strict=True):
        assert sa[:2] == sb[:2] and torch.equal(sa[3], sb[3])


@pytest.mark.parametrize("crash_at", [3, 5])  # mid round 1 (its best so far saved); round 2
def test_resume_scores_like_an_uninterrupted_run(tmp_path, crash_at):
    full, _, spy_full = make_loop(3, checkpoint_dir=tmp_path / "a")
    full.run()
    crashing, learner, _ = make_loop(3, checkpoint_dir=tmp_path / "b")
    train = learner.train_epoch

    def crash(indices, epoch):
        if epoch == crash_at:
            raise KeyboardInterrupt
        return train(indices, epoch)

    learner.train_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["epoch"] == crash_at and state["mc_source"] == "snapshots"
    resumed, _, spy = make_loop(3, checkpoint_dir=tmp_path / "c")
    resumed.load_state_dict(state)
    resumed.run()
    assert np.array_equal(resumed.pool.entered, full.pool.entered)
    after = [s for s in spy_full.seen if 2 * s[0] > crash_at]
    assert len(spy.seen) == len(after) > 0
    for got, ref in zip(spy.seen, after, strict=True):
        assert got[:2] == ref[:2] and np.array_equal(got[2], ref[2])
        assert torch.equal(got[3], ref[3])


def test_a_checkpoint_of_another_source_is_refused(tmp_path):
    loop, _, _ = make_loop(mc_source="dropout", checkpoint_dir=tmp_path)
    loop.run()
    other, _, _ = make_loop()
    with pytest.raises(FlexsampleError, match="mc_source=dropout, this run has snapshots"):
        other.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert "snapshots" not in load_checkpoint(tmp_path / "checkpoint.pt")  # nothing kept


# -- the command line -------------------------------------------------------------------------
def test_cli_run_with_snapshots_completes(cli, tmp_path):
    out = tmp_path / "snap"
    res = cli(
        "run",
        "--rounds",
        "3",
        "--epochs-per-round",
        "1",
        "--mc-source",
        "snapshots",
        "--snapshots",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["mc_source"] == "snapshots" and cfg["snapshots"] == 2
    state = load_checkpoint(out / "checkpoint.pt")
    assert [r["round"] for r in state["snapshots"]["rounds"]] == [1, 2]  # the last 2 rounds
    # one epoch per round: at the only scored query (step 1) both members are round 0's
    # single epoch, so every BALD score is 0
    scores = np.load(out / "scores.npz")
    assert len(scores["score"]) > 0 and (scores["step"] == 1).all()
    assert (scores["score"] == 0.0).all()


def test_cli_one_snapshot_is_one_line_and_exit_2(cli, tmp_path):
    line = one_error_line(
        cli(
            "run",
            "--mc-source",
            "snapshots",
            "--snapshots",
            "1",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            tmp_path / "x",
        )
    )
    assert "--snapshots" in line and "2" in line, line
    assert not (tmp_path / "x").exists()
