"""Decoupling baselines (Kang et al. 2020): tau-norm, LWS, cRT, the run stage and the bench."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from flexsample.training import decouple as dc

from .conftest import one_error_line

# tiny tensors: one thread is fastest, and leaves the other cores alone
pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--rounds", "2", "--epochs-per-round", "1", "--device", "cpu", "--quiet"]


def _head(weight, bias) -> nn.Linear:
    return dc.linear_copy(torch.tensor(weight, dtype=torch.float32),
                          None if bias is None else torch.tensor(bias, dtype=torch.float32))


# --- tau-norm ------------------------------------------------------------------------------
def test_tau_norm_matches_hand_computed_weights():
    head = _head([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]], [1.0, -1.0, 0.5])
    one = dc.tau_norm_head(head, 1.0)
    assert torch.allclose(one.weight, torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, 0.0]]))
    half = dc.tau_norm_head(head, 0.5)  # ||w|| = 5, 2: divide by sqrt(5), sqrt(2)
    expected = torch.tensor([[3 / 5**0.5, 4 / 5**0.5], [0.0, 2 / 2**0.5], [0.0, 0.0]])
    assert torch.allclose(half.weight, expected)
    zero = dc.tau_norm_head(head, 0.0)  # tau = 0: the weights as they were, bias dropped
    assert torch.allclose(zero.weight, head.weight)
    for h in (one, half, zero):
        assert torch.equal(h.bias, torch.zeros(3))


def _brute_force_tau(weight: np.ndarray, x: np.ndarray, y: np.ndarray, grid) -> float:
    """Independent reference: numpy normalisation, sklearn balanced accuracy, first best."""
    best_tau, best = None, -1.0
    for tau in grid:
        norms = np.linalg.norm(weight, axis=1, keepdims=True)
        pred = (x @ (weight / norms**tau).T).argmax(1)
        score = balanced_accuracy_score(y, pred)
        if score > best + 1e-12:
            best_tau, best = tau, score
    return best_tau


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tau_chosen_on_validation_is_the_grid_argmax(seed):
    rng = np.random.default_rng(seed)
    c, d, n = 5, 8, 300
    # head-class rows have larger norms, as after training on a long tail
    weight = rng.normal(size=(c, d)) * np.linspace(3.0, 0.3, c)[:, None]
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    x += 1.5 * rng.normal(size=(c, d)).astype(np.float32)[y]  # some signal to pick up
    res = dc.tau_norm(_head(weight, np.zeros(c)), c, None, x, y)
    assert res.tau == _brute_force_tau(weight, x, y, dc.TAU_GRID)
    assert set(res.tau_scores) == set(dc.TAU_GRID)
    for tau, score in res.tau_scores.items():
        norms = np.linalg.norm(weight, axis=1, keepdims=True)
        pred = (x @ (weight / norms**tau).T).argmax(1)
        assert score == pytest.approx(balanced_accuracy_score(y, pred))


def test_tau_ties_go_to_the_smaller_tau_and_a_given_tau_is_used():
    assert dc.choose_tau({0.3: 0.5, 0.0: 0.4, 0.1: 0.5, 0.2: float("nan")}) == 0.1
    res = dc.tau_norm(_head([[3.0, 4.0]], [2.0]), 1, tau=1.0)
    assert res.tau == 1.0 and res.tau_scores == {}
    assert torch.allclose(res.head.weight, torch.tensor([[0.6, 0.8]]))


# --- LWS -----------------------------------------------------------------------------------
def test_lws_with_unit_scales_gives_the_stage1_logits():
    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    x = torch.randn(10, 6)
    with torch.no_grad():
        assert torch.allclose(dc.lws_logits(x, head, torch.ones(4)), head(x))
        assert torch.allclose(dc.lws_head(head, np.ones(4))(x), head(x))
        f = torch.tensor([2.0, 0.5, 1.0, 3.0])
        assert torch.allclose(dc.lws_head(head, f.numpy())(x), head(x) * f, atol=1e-6)


# --- class-balanced sampling ---------------------------------------------------------------
def test_class_balanced_order_draws_classes_uniformly():
    labels = np.repeat([0, 1, 2], [1000, 100, 10])
    counts = np.zeros(3)
    for epoch in range(20):
        order = dc.epoch_order(labels, seed=0, epoch=epoch)
        assert len(order) == len(labels)
        counts += np.bincount(labels[order], minlength=3)
    share = counts / counts.sum()  # 22,200 draws: a uniform class share is 1/3 +- 0.01
    assert np.allclose(share, 1 / 3, atol=0.015), share
    assert np.array_equal(dc.epoch_order(labels, 0, 3), dc.epoch_order(labels, 0, 3))
    assert not np.array_equal(dc.epoch_order(labels, 0, 3), dc.epoch_order(labels, 1, 3))


# --- cRT and LWS on separable toy features -------------------------------------------------
def _blobs(counts, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    y = np.repeat(np.arange(3), counts)
    x = centers[y] + 0.6 * rng.normal(size=(len(y), 2))
    return x.astype(np.float32), y


def _bal_acc(head: nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = head(torch.as_tensor(x)).argmax(1).numpy()
    return balanced_accuracy_score(y, pred)


def test_crt_learns_a_balanced_head_on_separable_features():
    x, y = _blobs([400, 40, 6], seed=0)
    xt, yt = _blobs([200, 200, 200], seed=1)
    res = dc.train_crt(x, y, 3, epochs=30, batch_size=32, lr=0.05, weight_decay=1e-4, seed=0)
    assert _bal_acc(res.head, xt, yt) >= 0.97
    again = dc.train_crt(x, y, 3, epochs=30, batch_size=32, lr=0.05, weight_decay=1e-4, seed=0)
    assert torch.equal(res.head.weight, again.head.weight)  # seeded init and order


def test_lws_rebalances_a_head_biased_towards_the_head_class():
    x, y = _blobs([400, 40, 6], seed=0)
    xt, yt = _blobs([200, 200, 200], seed=1)
    # right directions, but a large bias for class 0 (a stage-1 head trained on the long tail)
    centers = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    biased = _head(0.2 * centers, [8.0, 0.0, 0.0])
    assert _bal_acc(biased, xt, yt) < 0.5
    res = dc.train_lws(x, y, biased)
    assert _bal_acc(res.head, xt, yt) >= 0.95
    assert res.scales[0] < res.scales[1:].min()  # the head class's logits shrunk relatively
    assert torch.equal(biased.weight, torch.tensor(0.2 * centers, dtype=torch.float32))


def test_head_is_installed_in_place_under_every_name():
    class Twice(nn.Module):  # a timm-like model: its head is registered twice
        def __init__(self):
            super().__init__()
            self.net = nn.Module()
            self.net.fc = nn.Linear(3, 2)
            self.head = self.net.fc

    from flexsample.workflows.decouple import head_prefixes

    model = Twice()
    new = _head([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [7.0, 8.0])
    dc.install_head(model, new)
    state = model.state_dict()
    assert torch.equal(state["head.weight"], new.weight)
    assert torch.equal(state["net.fc.bias"], new.bias)
    assert sorted(head_prefixes(model)) == ["head.", "net.fc."]


# --- the run stage, end to end -------------------------------------------------------------
@pytest.fixture(scope="module")
def crt_run(tmp_path_factory) -> Path:
    from .conftest import Cli

    out = tmp_path_factory.mktemp("dec") / "crt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the function-scoped fixture
    try:
        res = Cli()("run", *QUICK, "--decouple", "crt", "--out", out)
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


def test_run_writes_both_stages(crt_run):
    res = json.loads((crt_run / "results.json").read_text())
    d = res["decouple"]
    assert d["method"] == "crt" and d["epochs"] == 10 and d["seconds"] > 0
    for stage in ("stage1", "stage2"):
        for split in ("val", "test"):
            assert 0 <= d[stage][split]["balanced_accuracy"] <= 1
    assert res["test"] == d["stage2"]["test"]
    assert d["stage1"]["test"]["confusion_matrix"] != d["stage2"]["test"]["confusion_matrix"]
    assert len(d["losses"]) == 10 and d["feature_samples"] == res["train_size"]
    assert res["compute"]["decouple_samples"] == res["train_size"]
    assert res["timings"]["decouple_s"] == d["seconds"]


def test_eval_reads_the_stage2_model(cli, crt_run):
    res = cli("eval", crt_run)
    assert res.exit_code == 0, res.output
    results = json.loads((crt_run / "results.json").read_text())
    assert f"{results['decouple']['stage2']['test']['balanced_accuracy']:.4f}" in res.stdout
    assert f"{results['decouple']['stage2']['val']['balanced_accuracy']:.4f}" in res.stdout


def test_resume_after_a_kill_inside_stage2_redoes_it_from_stage1(cli, crt_run, tmp_path):
    import shutil

    out = tmp_path / "killed"
    shutil.copytree(crt_run, out)
    # killed after best.pt took the stage-2 head, before results.json was written
    (out / "results.json").unlink()
    res = cli("run", "--resume", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    a = json.loads((crt_run / "results.json").read_text())["decouple"]
    b = json.loads((out / "results.json").read_text())["decouple"]
    for stage in ("stage1", "stage2"):
        for split in ("val", "test"):
            assert a[stage][split]["confusion_matrix"] == b[stage][split]["confusion_matrix"]
    # a finished run is left untouched by --resume
    before = (out / "results.json").read_bytes()
    assert cli("run", "--resume", "--out", out, "--quiet").exit_code == 0
    assert (out / "results.json").read_bytes() == before


def test_tau_norm_run_with_a_given_tau(cli, tmp_path):
    out = tmp_path / "tau"
    res = cli("run", *QUICK, "--decouple", "tau-norm", "--tau", "0.5", "--out", out)
    assert res.exit_code == 0, res.output
    d = json.loads((out / "results.json").read_text())["decouple"]
    assert d["tau"] == 0.5 and d["tau_chosen_on"] == "given" and d["epochs"] == 0
    from flexsample.engine.checkpoint import load_checkpoint

    best = load_checkpoint(out / "best.pt")
    w1 = best["decouple"]["stage1_head"]["weight"]
    expected = w1 / w1.norm(dim=1, keepdim=True) ** 0.5
    assert torch.allclose(best["model"]["head.weight"], expected, atol=1e-6)
    assert torch.equal(best["model"]["head.bias"], torch.zeros(len(w1)))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tau", "-1"], ["--tau", "greater than or equal to 0"]),
        (["--decouple", "foo"], ["--decouple", "'foo'", "crt", "tau-norm"]),
        (["--decouple-epochs", "0"], ["--decouple-epochs", "greater than or equal to 1"]),
    ],
)
def test_bad_decouple_input_is_one_line(cli, tmp_path, args, expected):
    line = one_error_line(cli("run", *QUICK, "--out", tmp_path / "r", *args))
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "r").exists()


# --- bench ---------------------------------------------------------------------------------
def test_decoupling_baselines_and_a_decoupled_curriculum_keep_plain_baselines(tmp_path):
    from flexsample.workflows.bench import plan_cells
    from flexsample.workflows.config import RunConfig

    base = RunConfig(decouple="lws")
    cells = plan_cells(base, tmp_path, ["random"], None, None, None, None, ["ce", "tau-norm"])
    by = {c.method: c.config for c in cells}
    assert by["random/linear"].decouple == "lws"  # the curriculum cell keeps --decouple
    assert by["baseline:ce"].decouple == "none"
    assert by["baseline:tau-norm"].decouple == "tau-norm"
    assert by["baseline:tau-norm"].policy == "full" and by["baseline:tau-norm"].loss == "ce"


def test_bench_with_tau_norm_writes_the_stage1_column(cli, tmp_path):
    out = tmp_path / "b"
    args = ["bench", "--baselines", "tau-norm", "--rounds", "2", "--epochs-per-round", "1"]
    res = cli(*args, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["decouple"] == "tau-norm"
    results = json.loads(next(out.rglob("results.json")).read_text())
    stage1 = results["decouple"]["stage1"]["test"]["balanced_accuracy"]
    assert float(rows[0]["stage1_test_balanced_accuracy"]) == pytest.approx(stage1, abs=1e-6)
    assert float(rows[0]["test_balanced_accuracy"]) == pytest.approx(
        results["test"]["balanced_accuracy"], abs=1e-6
    )
    md = (out / "summary.md").read_text()
    assert "| stage-1 test bal-acc |" in md and "baseline:tau-norm" in md
    assert f"{100 * stage1:.1f}" in md


def test_lws_scales_minimise_the_class_balanced_loss_like_scipy():
    """An independent solver (scipy's L-BFGS-B on NumPy) on the class-balanced weighted
    cross-entropy of the scaled stage-1 logits finds the same scales."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    rng = np.random.default_rng(3)
    centers = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    y = np.repeat(np.arange(3), [300, 30, 8])
    x = (centers[y] + 3.0 * rng.normal(size=(len(y), 2))).astype(np.float32)  # overlapping
    head = _head(0.3 * centers, [3.0, 0.0, -1.0])
    z = (x @ (0.3 * centers).T + np.array([3.0, 0.0, -1.0])).astype(np.float64)
    counts = np.bincount(y, minlength=3)
    w = 1.0 / (3 * counts[y])

    def loss(f):
        s = z * f
        return float((w * (logsumexp(s, axis=1) - s[np.arange(len(y)), y])).sum())

    want = minimize(loss, np.ones(3), method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-10}).x
    got = dc.train_lws(x, y, head).scales
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(dc.class_balanced_weights(y, 3)[[0, 300, 330]],
                               [1 / 900, 1 / 90, 1 / 24])
