"""Medical-imaging metrics: one-vs-rest AUC, sensitivity / specificity, calibration (ECE and
the reliability diagram), against hand-computed values and independent implementations
(scikit-learn, torchmetrics), and in every report of a run (results.json, calibration.png,
`flexsample eval`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from sklearn.metrics import multilabel_confusion_matrix, roc_auc_score
from torchmetrics.functional.classification import (
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_recall,
    multiclass_specificity,
)

from flexsample.cli.console import metrics_table
from flexsample.datasets.base import Split
from flexsample.training.data import SplitLoader, predict_probs
from flexsample.training.evaluate import adjust_probs, evaluate
from flexsample.training.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    sensitivity_specificity,
)
from flexsample.workflows.plots import plot_calibration

# six samples, two per class; predictions 0, 1, 1, 1, 2, 0
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.1, 0.8, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.2, 0.6],
        [0.5, 0.1, 0.4],
    ]
)
NEW_KEYS = {
    "macro_auc",
    "auc_excluded_classes",
    "per_class_sensitivity",
    "per_class_specificity",
    "ece",
    "calibration",
    "class_support",
    "class_balanced",
    "notes",
}
DESIGN_KEYS = {
    "balanced_accuracy",
    "accuracy",
    "macro_f1",
    "per_class_recall",
    "group_recall",
    "confusion_matrix",
    "per_class_auc",
}


def random_case(seed: int, n: int = 400, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def strict_json(obj: object) -> object:
    """JSON round trip that refuses NaN and infinities (invalid JSON)."""
    return json.loads(json.dumps(obj, allow_nan=False))


# ------------------------------------------------------------------ hand-computed


def test_hand_computed_sensitivity_specificity_auc_ece():
    m = classification_metrics(Y, P)
    # confusion rows (true 0, 1, 2): [1 1 0] [0 2 0] [1 0 1]
    assert m["per_class_sensitivity"] == [0.5, 1.0, 0.5]
    # negatives of each class: 4; false positives: class 0 one (s5), class 1 one (s1), class 2 none
    assert m["per_class_specificity"] == [0.75, 0.75, 1.0]
    # class 0: positives 0.7, 0.4 vs negatives 0.1 0.3 0.2 0.5 -> 7 of 8 pairs ordered
    assert m["per_class_auc"] == pytest.approx([7 / 8, 1.0, 1.0])
    assert m["macro_auc"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert m["auc_excluded_classes"] == []
    assert m["class_support"] == [2, 2, 2]
    # balanced split: accuracy 4/6 = mean recall (0.5 + 1 + 0.5) / 3, exactly, and a note says so
    assert m["class_balanced"] is True
    assert m["accuracy"] == pytest.approx(4 / 6) and m["balanced_accuracy"] == pytest.approx(4 / 6)
    assert any("accuracy equals balanced_accuracy" in n for n in m["notes"])


def test_hand_computed_ece_with_four_bins():
    # top-label confidences 0.7 0.5 0.8 0.6 0.6 0.5, correct for samples 0, 2, 3, 4;
    # bins of width 1/4:
    # [0.5, 0.75): 0.7 ok, 0.5 wrong, 0.6 ok, 0.6 ok, 0.5 wrong -> acc 0.6, mean conf 0.58
    # [0.75, 1]:   0.8 ok                                      -> acc 1.0, mean conf 0.8
    bins = reliability_bins(P, Y, n_bins=4)
    assert bins["count"].tolist() == [0, 0, 5, 1]
    assert bins["accuracy"][2:] == pytest.approx([0.6, 1.0])
    assert bins["confidence"][2:] == pytest.approx([0.58, 0.8])
    assert np.isnan(bins["accuracy"][:2]).all()
    assert expected_calibration_error(P, Y, 4) == pytest.approx(5 / 6 * 0.02 + 1 / 6 * 0.2)


def test_confidence_one_goes_to_the_last_bin():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1]])
    bins = reliability_bins(probs, np.array([0, 1, 0]), n_bins=10)
    assert bins["count"].tolist() == [0] * 9 + [3]
    # one bin: accuracy 2/3, mean confidence 2.9/3
    assert expected_calibration_error(probs, np.array([0, 1, 0]), 10) == pytest.approx(0.9 / 3)


def test_imbalanced_split_has_no_accuracy_note():
    y = np.array([0, 0, 0, 1])
    probs = np.eye(2)[[0, 0, 0, 0]]
    m = classification_metrics(y, probs)
    assert m["class_balanced"] is False
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5
    assert not any("accuracy equals" in n for n in m["notes"])


# ------------------------------------------------------------------ independent references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_scikit_learn_ovr_macro_and_torchmetrics(seed):
    y, probs = random_case(seed)
    m = classification_metrics(y, probs)
    assert m["macro_auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    tm = multiclass_auroc(torch.from_numpy(probs), torch.from_numpy(y), 6, average="macro")
    assert m["macro_auc"] == pytest.approx(float(tm), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sensitivity_specificity_match_scikit_learn_and_torchmetrics(seed):
    y, probs = random_case(seed)
    m = classification_metrics(y, probs)
    mcm = multilabel_confusion_matrix(y, probs.argmax(1), labels=np.arange(6))
    tn, fp, fn, tp = (mcm[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    assert m["per_class_sensitivity"] == pytest.approx((tp / (tp + fn)).tolist())
    assert m["per_class_specificity"] == pytest.approx((tn / (tn + fp)).tolist())
    p, t = torch.from_numpy(probs), torch.from_numpy(y)
    spec = multiclass_specificity(p, t, 6, average=None).numpy()
    sens = multiclass_recall(p, t, 6, average=None).numpy()
    assert m["per_class_specificity"] == pytest.approx(spec.tolist(), abs=1e-6)
    assert m["per_class_sensitivity"] == pytest.approx(sens.tolist(), abs=1e-6)
    assert m["per_class_sensitivity"] == m["per_class_recall"]


@pytest.mark.parametrize(("seed", "n_bins"), [(0, 15), (1, 10), (2, 5)])
def test_ece_matches_torchmetrics(seed, n_bins):
    y, probs = random_case(seed)
    assert probs.max() < 1.0  # torchmetrics gives confidence exactly 1 a bin of its own
    ours = classification_metrics(y, probs, n_bins=n_bins)["ece"]
    ref = multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(y), 6, n_bins=n_bins, norm="l1"
    )
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_sensitivity_specificity_brute_force():
    y, probs = random_case(3, n=60, c=4)
    pred = probs.argmax(1)
    cm = np.zeros((4, 4), np.int64)
    for t, p in zip(y, pred, strict=True):
        cm[t, p] += 1
    sens, spec = sensitivity_specificity(cm)
    for c in range(4):
        pos, neg = y == c, y != c
        assert sens[c] == pytest.approx(np.mean(pred[pos] == c))
        assert spec[c] == pytest.approx(np.mean(pred[neg] != c))


# ------------------------------------------------------------------ edge cases


def test_class_absent_from_the_split():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    )
    m = strict_json(classification_metrics(y, probs))
    assert m["per_class_auc"][2] is None
    assert m["auc_excluded_classes"] == [2]
    # macro over the two present classes, each their binary AUC
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in (0, 1)])
    assert m["macro_auc"] == pytest.approx(expected)
    assert m["per_class_sensitivity"][2] is None  # no positives
    assert m["per_class_specificity"][2] == 0.8  # 4 of 5 negatives not called class 2
    assert any("undefined for label 2" in n and "other 2 classes" in n for n in m["notes"])


def test_single_class_and_empty_splits_do_not_crash():
    m = strict_json(classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]])))
    assert m["macro_auc"] is None and m["auc_excluded_classes"] == [0, 1]
    # class 0: one of its two negatives called class 0; class 1 has no negatives
    assert m["per_class_specificity"] == [0.5, None]
    assert any("fewer than two classes" in n for n in m["notes"])
    empty = strict_json(classification_metrics(np.zeros(0, np.int64), np.zeros((0, 3))))
    assert empty["ece"] is None and empty["accuracy"] is None and empty["macro_auc"] is None
    assert empty["calibration"]["count"] == [0] * 15


def test_metrics_use_the_logit_adjusted_probabilities():
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    labels = np.arange(40) % 3
    split = Split(labels, [str(i) for i in range(40)], in_memory=x)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    prior = np.array([90, 9, 1])
    device = torch.device("cpu")
    got = evaluate(model, split, device, prior_counts=prior, logit_adjust=1.0)
    raw = predict_probs(model, SplitLoader(split, False, device, 0))
    adjusted = adjust_probs(raw, prior, 1.0)
    assert got["ece"] == pytest.approx(expected_calibration_error(adjusted, labels))
    assert got["ece"] != pytest.approx(expected_calibration_error(raw, labels))
    assert got["per_class_auc"] == pytest.approx(
        classification_metrics(labels, adjusted)["per_class_auc"]
    )


# ------------------------------------------------------------------ properties


@st.composite
def predictions(draw):
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 40))
    weights = draw(
        st.lists(st.lists(st.floats(0.01, 1.0), min_size=c, max_size=c), min_size=n, max_size=n)
    )
    probs = np.asarray(weights)
    probs /= probs.sum(1, keepdims=True)
    y = np.asarray(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return y, probs


@settings(max_examples=40, deadline=None)
@given(predictions(), st.integers(1, 20))
def test_metric_bounds(case, n_bins):
    y, probs = case
    m = strict_json(classification_metrics(y, probs, n_bins=n_bins))
    assert 0.0 <= m["ece"] <= 1.0
    assert sum(m["calibration"]["count"]) == len(y)
    for key in ("per_class_sensitivity", "per_class_specificity", "per_class_auc"):
        assert all(v is None or 0.0 <= v <= 1.0 for v in m[key])
    assert m["macro_auc"] is None or 0.0 <= m["macro_auc"] <= 1.0
    if m["class_balanced"]:
        assert m["accuracy"] == pytest.approx(m["balanced_accuracy"], abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(predictions())
def test_one_bin_ece_is_the_confidence_accuracy_gap(case):
    y, probs = case
    gap = abs(np.mean(probs.argmax(1) == y) - probs.max(1).mean())
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(gap, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), min_size=1, max_size=6),
    st.integers(1, 20),
)
def test_perfect_calibration_gives_zero(groups, n_bins):
    # each group: k samples with confidence c/k >= 1/2 for class 0, exactly c of them class 0
    rows, labels = [], []
    for k, c in groups:
        c = max(c % (k + 1), (k + 1) // 2)
        conf = c / k
        rows += [[conf, 1 - conf]] * k
        labels += [0] * c + [1] * (k - c)
    probs, y = np.asarray(rows), np.asarray(labels)
    assert expected_calibration_error(probs, y, n_bins) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ reports


def test_metrics_table_shows_auc_ece_and_per_class_rates():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    )
    m = classification_metrics(y, probs)
    console = Console(record=True, width=140)
    console.print(metrics_table({"test": m}, ["nevus", "melanoma", "dermatofibroma"]))
    text = console.export_text()
    assert f"{m['macro_auc']:.4f}" in text and f"{m['ece']:.4f}" in text
    assert "macro AUC (one-vs-rest)" in text and "ECE (15 bins)" in text
    # melanoma (label 1): predictions 1, 0, 2 for its three samples -> sensitivity 1/3; one
    # of the two others called melanoma -> specificity 1/2; AUC from scikit-learn
    auc = roc_auc_score(y == 1, probs[:, 1])
    assert f"0.333 / 0.500 / {auc:.3f}" in text
    assert "- / 0.800 / -" in text  # the absent class: no sensitivity, no AUC
    assert "undefined for dermatofibroma" in text


def test_plot_calibration_writes_a_png(tmp_path):
    y, probs = random_case(0, n=50)
    plot_calibration(tmp_path / "calibration.png", probs, y, title="t")
    assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.png"]  # no temp file left


def test_run_reports_the_medical_metrics(tiny_run: Path):
    text = (tiny_run / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    n_test = sum(results["test"]["class_support"])
    for key in ("test", "test_last"):
        m = results[key]
        assert NEW_KEYS | DESIGN_KEYS <= set(m), key
        assert sum(m["calibration"]["count"]) == n_test
        assert 0.0 <= m["ece"] <= 1.0 and 0.0 <= m["macro_auc"] <= 1.0
        # digits-lt's test split is balanced (50 per class): the note explains accuracy
        assert m["class_balanced"] is True and m["accuracy"] == pytest.approx(
            m["balanced_accuracy"], abs=1e-12
        )
        assert m["per_class_sensitivity"] == m["per_class_recall"]
    png = tiny_run / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_shows_the_medical_metrics(tiny_run: Path, cli):
    results = json.loads((tiny_run / "results.json").read_text())
    before = (tiny_run / "calibration.png").stat().st_ino
    res = cli("eval", tiny_run)
    assert res.exit_code == 0, res.output
    test = results["test"]
    assert f"{test['macro_auc']:.4f}" in res.stdout and f"{test['ece']:.4f}" in res.stdout
    assert "macro AUC (one-vs-rest)" in res.stdout and "sens / spec / AUC" in res.stdout
    assert "accuracy equals balanced_accuracy" in " ".join(res.stdout.split())
    # eval draws the picture again, replacing the file atomically (a new inode)
    assert (tiny_run / "calibration.png").stat().st_ino != before
