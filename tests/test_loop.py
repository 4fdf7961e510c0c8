"""The curriculum loop with a scripted learner: order of events, records, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flexsample.engine import (
    Allocation,
    Curriculum,
    EpochResult,
    FlexsampleError,
    Pool,
    get_allocation,
    get_estimator,
    get_policy,
    tensor_inputs,
)
from flexsample.engine.checkpoint import load_checkpoint


class TinyModel(nn.Module):
    def __init__(self, d=4, c=3):
        super().__init__()
        self.body = nn.Linear(d, 8)
        self.head = nn.Linear(8, c)
        self.dropout_p = 0.5

    def embed(self, x):
        return torch.relu(self.body(x))

    def forward(self, x):
        return self.head(self.embed(x))


class ScriptedLearner:
    """Validation accuracy follows a script; records what the loop asked for."""

    def __init__(self, accs):
        self.model = TinyModel()
        self.accs = list(accs)
        self.calls = []

    def start_round(self, round_index, num_epochs):
        self.calls.append(("round", round_index, num_epochs))

    def train_epoch(self, indices, epoch):
        self.calls.append(("train", epoch, len(indices)))
        return EpochResult(loss=1.0, seconds=0.01)

    def validate(self):
        acc = self.accs.pop(0)
        return acc, [acc] * 3

    def state_dict(self):
        return {"accs": list(self.accs)}

    def load_state_dict(self, state):
        self.accs = list(state["accs"])


def make_loop(policy="linear", accs=None, rounds=3, epochs=2, checkpoint_dir=None):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 12, 6])
    x = torch.as_tensor(rng.normal(size=(len(labels), 4)), dtype=torch.float32)
    torch.manual_seed(0)
    learner = ScriptedLearner(accs or np.linspace(0.1, 0.9, rounds * epochs))
    loop = Curriculum(
        Pool(labels, 3),
        get_policy(policy),
        get_allocation("proportional"),
        get_estimator("entropy"),
        learner,
        tensor_inputs(x),
        rounds=rounds,
        epochs_per_round=epochs,
        seed=0,
        score_batch_size=16,
        checkpoint_dir=checkpoint_dir,
    )
    anchors = np.concatenate([np.flatnonzero(labels == c)[:6] for c in range(3)])
    loop.start(anchors)
    return loop, learner


def test_linear_rounds_records_and_best():
    loop, learner = make_loop(accs=[0.2, 0.5, 0.4, 0.6, 0.6, 0.3])
    res = loop.run()
    assert [(r.step, r.epoch, r.subset_size, r.epochs) for r in res.records] == [
        (0, 0, 18, 2),
        (1, 2, 33, 2),
        (2, 4, 48, 2),
    ]
    assert res.records[-1].class_counts == [30, 12, 6]
    assert res.best_val_balanced_accuracy == 0.6 and res.best_epoch == 3  # first best kept
    assert res.subset_size_at_best == 33
    assert [c for c in learner.calls if c[0] == "round"] == [
        ("round", 0, 2),
        ("round", 1, 2),
        ("round", 2, 2),
    ]
    assert loop.best_state["val_balanced_accuracy"] == 0.6


def test_full_policy_joins_step_zero():
    loop, learner = make_loop(policy="full")
    res = loop.run()
    assert len(res.records) == 1 and res.records[0].step == 0
    assert res.records[0].subset_size == 48 and res.records[0].epochs == 6
    assert (loop.pool.entered == 0).all()
    assert learner.calls[1] == ("train", 0, 48)


def test_bad_allocation_is_named():
    class Greedy(Allocation):
        name = "greedy"

        def quotas(self, state, budget):
            return state.remaining_counts + 1

    loop, _ = make_loop()
    loop.allocation = Greedy()
    with pytest.raises(FlexsampleError, match="allocation 'greedy' returned quotas"):
        loop.run()


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    full, _ = make_loop(checkpoint_dir=tmp_path / "a")
    ref = full.run()
    crashing, learner = make_loop(checkpoint_dir=tmp_path / "b")

    def crash(indices, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return ScriptedLearner.train_epoch(learner, indices, epoch)

    learner.train_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["epoch"] == 3
    resumed, _ = make_loop(checkpoint_dir=tmp_path / "c")
    resumed.load_state_dict(state)
    out = resumed.run()
    assert np.array_equal(resumed.pool.entered, full.pool.entered)

    def timeless(records):
        return [{k: v for k, v in r.to_json().items() if not k.endswith("_s")} for r in records]

    assert timeless(out.records) == timeless(ref.records)
    assert out.best_val_balanced_accuracy == ref.best_val_balanced_accuracy


def test_checkpoint_from_another_config_is_refused(tmp_path):
    loop, _ = make_loop(checkpoint_dir=tmp_path)
    loop.run()
    other, _ = make_loop(rounds=4)
    with pytest.raises(FlexsampleError, match="rounds=3, this run has 4"):
        other.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt"))
