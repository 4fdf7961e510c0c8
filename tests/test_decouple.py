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
    return dc.linear_copy(
        torch.tensor(weight, dtype=torch.float32),
        None if bias is None else torch.tensor(bias, dtype=torch.float32),
    )


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


# the authors' sweep, classifier-balancing tau_norm.py: `for p in np.linspace(0, 2, 21)`
AUTHORS_TAU_GRID = np.linspace(0, 2, 21)


def test_tau_grid_is_the_authors_sweep():
    np.testing.assert_allclose(dc.TAU_GRID, AUTHORS_TAU_GRID, atol=1e-12)
    assert dc.TAU_GRID[0] == 0.0 and dc.TAU_GRID[-1] == 2.0 and len(dc.TAU_GRID) == 21
    assert all(t == round(t, 1) for t in dc.TAU_GRID)  # clean keys in results.json


def test_a_tau_above_one_is_chosen_when_it_is_the_only_best():
    """Rows of norm 4 and 1 along e1 and e2: logits 4^(1 - tau) x1 and x2. Validation point
    (1, 0.45) of class 0 is right iff 4^(1 - tau) > 0.45 (tau < 1.58); (1, 0.55) of class 1
    iff 4^(1 - tau) < 0.55 (tau > 1.43): only tau = 1.5 gets both, outside the old 0..1 grid."""
    weight = np.array([[4.0, 0.0], [0.0, 1.0]])
    x = np.array([[1.0, 0.45], [1.0, 0.55]], dtype=np.float32)
    y = np.array([0, 1])
    res = dc.tau_norm(_head(weight, [0.0, 0.0]), 2, None, x, y)
    assert res.tau == 1.5
    assert res.tau_scores[1.5] == 1.0
    assert all(v == 0.5 for t, v in res.tau_scores.items() if t != 1.5)
    assert _brute_force_tau(weight, x, y, AUTHORS_TAU_GRID) == pytest.approx(1.5)


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
    assert res.tau == pytest.approx(_brute_force_tau(weight, x, y, AUTHORS_TAU_GRID))
    assert set(res.tau_scores) == set(dc.TAU_GRID)
    for tau, score in res.tau_scores.items():
        norms = np.linalg.norm(weight, axis=1, keepdims=True)
        pred = (x @ (weight / norms**tau).T).argmax(1)
        assert score == pytest.approx(balanced_accuracy_score(y, pred))


def test_tau_ties_go_to_the_smaller_tau_and_a_given_tau_is_used():
    assert dc.choose_tau({0.3: 0.5, 0.0: 0.4, 0.1: 0.5, 0.2: float("nan")}) == 0.1
    assert dc.choose_tau({2.0: 0.7, 1.5: 0.7, 1.9: 0.6}) == 1.5
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


def _reference_lws(x, y, weight, bias, *, epochs, batch_size, lr, momentum, weight_decay, seed):
    """LWS as the authors train it, written in NumPy (float64): logits z = x W^T + b fixed,
    s = z * f; per class-balanced batch (dc.epoch_order, the sampler tested above) the gradient
    of the mean cross-entropy, dL/df_c = mean_i (softmax(s_i)_c - [y_i = c]) z_ic; torch's SGD
    (g += wd f; v = g on the first step, else momentum v + g; f -= lr_t v) with
    lr_t = lr (1 + cos(pi t / T)) / 2 over the T steps."""
    z = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    n, c = z.shape
    f = np.ones(c)
    v = None
    steps = -(-n // batch_size)
    total, t = epochs * steps, 0
    for epoch in range(epochs):
        order = dc.epoch_order(y, seed, epoch)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            s = z[idx] * f
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            g = (p * z[idx]).mean(axis=0) + weight_decay * f
            v = g if v is None else momentum * v + g
            f = f - lr * (1 + np.cos(np.pi * t / total)) / 2 * v
            t += 1
    return f


@pytest.mark.parametrize(
    ("seed", "batch_size", "spread"), [(0, 32, 0.6), (1, 64, 3.0), (2, 500, 1.0)]
)
def test_lws_matches_an_independent_implementation_of_the_authors_recipe(seed, batch_size, spread):
    """Separable (0.6) and overlapping (3.0) features: the same scales as the NumPy SGD."""
    rng = np.random.default_rng(seed)
    centers = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    y = np.repeat(np.arange(3), [300, 30, 8])
    x = (centers[y] + spread * rng.normal(size=(len(y), 2))).astype(np.float32)
    weight, bias = 0.3 * centers, np.array([3.0, 0.0, -1.0])
    head = _head(weight, bias)
    weight = head.weight.detach().double().numpy()  # the head's float32 values
    bias = head.bias.detach().double().numpy()
    got = dc.train_lws(x, y, head, batch_size=batch_size, seed=seed)
    want = _reference_lws(
        x,
        y,
        weight,
        bias,
        epochs=5,
        batch_size=batch_size,
        lr=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        seed=seed,
    )
    np.testing.assert_allclose(got.scales, want, rtol=1e-9, atol=1e-12)
    assert (dc.LWS_EPOCHS, dc.LWS_LR, dc.LWS_MOMENTUM, dc.LWS_WEIGHT_DECAY) == (5, 0.2, 0.9, 5e-4)
    # the reported losses: the class-balanced loss over the split, before (f = 1) and after
    z = x.astype(np.float64) @ weight.T + bias
    w = dc.class_balanced_weights(y, 3)
    for f, loss in zip([np.ones(3), want], got.losses, strict=True):
        s = z * f
        ce = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1) - s[np.arange(len(y)), y]
        assert loss == pytest.approx(float((w * ce).sum()), rel=1e-9)
    np.testing.assert_allclose(
        dc.class_balanced_weights(y, 3)[[0, 300, 330]], [1 / 900, 1 / 90, 1 / 24]
    )


def test_lws_is_a_pure_function_of_its_inputs_on_separable_features():
    """Separable stage-1 logits (no finite minimiser of the class-balanced loss): the scales
    are finite and the same call gives the same scales, whatever the global random state; the
    head is left as it was and the global torch generator untouched; the seed matters."""
    x, y = _blobs([400, 40, 6], seed=0)
    centers = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    head = _head(2.0 * centers, [1.0, 0.0, 0.0])
    with torch.no_grad():
        assert _bal_acc(head, x, y) == 1.0  # separable on the training split
    before = head.weight.clone(), head.bias.clone()
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 - the global state, scrambled on purpose
    state = torch.get_rng_state()
    a = dc.train_lws(x, y, head, batch_size=64, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    torch.rand(5)
    b = dc.train_lws(x, y, head, batch_size=64, seed=3)
    assert np.array_equal(a.scales, b.scales) and a.losses == b.losses
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])
    assert np.isfinite(a.scales).all() and (np.abs(a.scales) < 10).all()
    c = dc.train_lws(x, y, head, batch_size=64, seed=4)
    assert not np.array_equal(a.scales, c.scales)
    with pytest.raises(ValueError, match="epochs"):
        dc.train_lws(x, y, head, epochs=0)


def test_lws_run_reports_the_authors_epochs(cli, tmp_path):
    out = tmp_path / "lws"
    res = cli("run", *QUICK, "--decouple", "lws", "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    d = results["decouple"]
    assert d["method"] == "lws" and d["epochs"] == dc.LWS_EPOCHS == 5
    assert len(d["scales"]) == len(results["class_names"]) and len(d["losses"]) == 2
    assert d["feature_samples"] == results["train_size"] and results["test"] == d["stage2"]["test"]
    from flexsample.engine.checkpoint import load_checkpoint

    best = load_checkpoint(out / "best.pt")
    w1 = best["decouple"]["stage1_head"]["weight"]
    f = torch.tensor(d["scales"], dtype=torch.float32)[:, None]
    assert torch.allclose(best["model"]["head.weight"], w1 * f, atol=1e-6)
