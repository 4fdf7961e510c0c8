"""Evaluation metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from flexsample.datasets.base import groups_by_count
from flexsample.training.evaluate import adjust_probs
from flexsample.training.metrics import classification_metrics


def test_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    probs = rng.dirichlet(np.ones(5), 300)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, groups=["head", "head", "medium", "tail", "tail"])
    assert np.isclose(m["balanced_accuracy"], balanced_accuracy_score(y, pred))
    assert np.isclose(m["accuracy"], (pred == y).mean())
    assert np.isclose(m["macro_f1"], f1_score(y, pred, average="macro"))
    assert np.allclose(m["per_class_recall"], recall_score(y, pred, average=None))
    r = m["per_class_recall"]
    assert np.isclose(m["group_recall"]["head"], (r[0] + r[1]) / 2)
    assert np.isclose(m["group_recall"]["medium"], r[2])
    assert np.isclose(m["group_recall"]["tail"], (r[3] + r[4]) / 2)
    assert np.asarray(m["confusion_matrix"]).sum() == 300


def test_hand_computed_case():
    y = np.array([0, 0, 0, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 2, 0]]
    m = classification_metrics(y, probs)
    assert m["per_class_recall"] == [2 / 3, 1.0, 0.5]
    assert np.isclose(m["balanced_accuracy"], (2 / 3 + 1 + 0.5) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_absent_class_is_excluded_not_zero():
    y = np.array([0, 0, 1])
    probs = np.eye(3)[[0, 1, 1]]
    m = classification_metrics(y, probs)
    assert m["per_class_recall"][2] is None
    assert np.isclose(m["balanced_accuracy"], 0.75)


def test_groups_by_count_in_thirds():
    assert groups_by_count(np.array([5, 100, 50, 1, 20, 9])) == [
        "tail",
        "head",
        "head",
        "tail",
        "medium",
        "medium",
    ]


def test_logit_adjustment_moves_towards_rare_classes():
    probs = np.array([[0.6, 0.4]])
    adjusted = adjust_probs(probs, np.array([90, 10]), tau=1.0)
    # log-odds shift by log(0.9/0.1): 0.6/0.4 * 0.1/0.9 = 1/6 -> p0 = 1/7
    assert np.allclose(adjusted, [[1 / 7, 6 / 7]], atol=1e-6)
    assert np.array_equal(adjust_probs(probs, np.array([90, 10]), tau=0.0), probs)
