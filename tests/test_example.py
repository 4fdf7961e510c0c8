"""The own-loop example drives the engine without training/ or the CLI."""

from __future__ import annotations

import ast
import importlib.util

import numpy as np
import pytest

from flexsample.engine import PolicyState, get_allocation

from .conftest import REPO

EXAMPLE = REPO / "examples" / "custom_loop.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_loop", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def curriculum_run(example):
    return example.main(rounds=3, epochs=2, seed=0)


def test_example_uses_only_the_engine_and_data():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(m.startswith(("flexsample.training", "flexsample.cli")) for m in imported)


def test_curriculum_example_grows_to_the_full_set(curriculum_run):
    sizes = [r.subset_size for r in curriculum_run["records"]]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    pool = curriculum_run["pool"]
    assert pool.is_full and set(np.unique(pool.entered)) == {0, 1, 2}
    assert 0.0 <= curriculum_run["test_balanced_accuracy"] <= 1.0


def test_anchors_are_the_samples_nearest_their_class_prototype(example, curriculum_run):
    """Checked against a plain numpy cosine ranking of the example's pixel features."""
    from flexsample.datasets import build_dataset

    ds = build_dataset("digits-lt", imbalance_ratio=100, data_seed=0)
    feats = example.pixel_features(ds.train.in_memory).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    anchors = curriculum_run["anchors"]
    assert np.array_equal(np.flatnonzero(curriculum_run["pool"].entered == 0), anchors)
    chosen = np.zeros(len(feats), bool)
    chosen[anchors] = True
    for c in range(ds.num_classes):
        members = np.flatnonzero(ds.train.labels == c)
        proto = feats[members].mean(0)
        sims = feats[members] @ (proto / np.linalg.norm(proto))
        picked, left = sims[chosen[members]], sims[~chosen[members]]
        assert len(picked) >= 1
        if len(left):
            assert picked.min() >= left.max() - 1e-5, c


def test_queries_follow_the_difficulty_allocation(curriculum_run):
    """Each query's quotas are the difficulty allocation of the last validation recall."""
    records, history = curriculum_run["records"], curriculum_run["val_history"]
    labels, entered = curriculum_run["pool"].labels, curriculum_run["pool"].entered
    queries = curriculum_run["queries"]
    assert [q.step for q in queries] == [1, 2]
    differs = False
    for q in queries:
        epoch = records[q.step].epoch
        before = (entered >= 0) & (entered < q.step)
        state = PolicyState(
            epoch=epoch,
            step=q.step,
            rounds=3,
            epochs_per_round=2,
            subset_counts=np.bincount(labels[before], minlength=10),
            remaining_counts=np.bincount(labels[~before], minlength=10),
            anchor_size=int((entered == 0).sum()),
            val_history=tuple(v for v in history if v.epoch < epoch),
        )
        budget = int(q.quotas.sum())
        assert budget > 0
        assert np.array_equal(q.quotas, get_allocation("difficulty").quotas(state, budget))
        differs |= not np.array_equal(
            q.quotas, get_allocation("proportional").quotas(state, budget)
        )
    assert differs  # the recall made a difference


def test_manual_loop_selects_what_the_curriculum_selects(example, curriculum_run):
    out = example.manual_loop(rounds=3, epochs=2, seed=0)
    assert np.array_equal(out["pool"].entered, curriculum_run["pool"].entered)
    assert [h["subset_size"] for h in out["history"]] == [
        r.subset_size for r in curriculum_run["records"]
    ]
    assert [h["quotas"] for h in out["history"][1:]] == [
        q.quotas.tolist() for q in curriculum_run["queries"]
    ]
