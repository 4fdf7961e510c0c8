"""The estimator plugin API: registration, output validation naming the plugin, the example."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from torch import nn

from flexsample import Estimator, register_estimator
from flexsample.engine import registry as registry_mod
from flexsample.engine.context import ScoringContext, tensor_inputs
from flexsample.engine.errors import EstimatorError
from flexsample.engine.options import OptionError
from flexsample.engine.registries import ESTIMATORS, get_estimator, list_estimators
from flexsample.engine.registry import Registry, import_plugin
from flexsample.engine.scoring import score_candidates
from flexsample.estimators import build_estimator
from flexsample.training.models import adapt_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin_package"


def make_ctx(n: int = 12) -> ScoringContext:
    torch.manual_seed(0)
    model = adapt_model(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 3), 0.5).eval()
    x = torch.randn(n, 6)
    return ScoringContext(model, tensor_inputs(x), np.arange(n) % 3, seed=0, step=1)


def plugin(name: str, needs: frozenset[str], fn) -> type[Estimator]:
    """A throwaway estimator class whose score is `fn(ctx, candidates)`."""

    class Plugin(Estimator):
        """A test plugin."""

        def score(self, ctx, candidates):
            return fn(ctx, candidates)

    Plugin.name, Plugin.needs = name, needs
    Plugin.__qualname__ = f"Plugin_{name.replace('-', '_')}"
    return Plugin


def test_registration_by_decorator_with_options() -> None:
    @register_estimator("test-double-margin")
    class DoubleMargin(Estimator):
        """Twice the top-2 margin (test plugin)."""

        needs = frozenset({"probs"})

        def __init__(self, knn: int = 10) -> None:
            self.knn = knn

        def score(self, ctx, candidates):
            p = np.sort(ctx.probs(candidates), axis=1)
            return 2.0 * (p[:, -1] - p[:, -2])

    assert "test-double-margin" in list_estimators()
    assert DoubleMargin.name == "test-double-margin"
    est = get_estimator("test-double-margin", knn=3)  # what it declares
    assert est.knn == 3
    with pytest.raises(
        OptionError,  # and only that: an option it does not declare is refused
        match="estimator 'test-double-margin' has no option 'mc_samples'; its options: knn",
    ):
        get_estimator("test-double-margin", knn=3, mc_samples=9)
    rows = {n: (doc, mod) for n, doc, mod in ESTIMATORS.describe()}
    assert rows["test-double-margin"][0] == "Twice the top-2 margin (test plugin)."
    ctx = make_ctx()
    scores = score_candidates(build_estimator("test-double-margin+entropy"), ctx, np.arange(12))
    assert scores.shape == (12,)


def test_a_name_cannot_be_taken_twice() -> None:
    register_estimator("test-taken")(plugin("test-taken", frozenset(), lambda c, i: i * 1.0))
    with pytest.raises(ValueError, match="already registered"):

        @register_estimator("test-taken")
        class Other(Estimator):
            def score(self, ctx, candidates):
                return np.zeros(len(candidates))


@pytest.mark.parametrize(
    "fn, needs, match",
    [
        (
            lambda c, i: np.zeros(len(i) + 1),
            frozenset(),
            r"returned shape \(13,\); expected \(12,\)",
        ),
        (lambda c, i: np.zeros((len(i), 1)), frozenset(), r"returned shape \(12, 1\)"),
        (lambda c, i: np.full(len(i), np.nan), frozenset(), "12 non-finite scores"),
        (lambda c, i: np.r_[np.inf, np.zeros(len(i) - 1)], frozenset(), "1 non-finite"),
        (lambda c, i: np.zeros(len(i), dtype=bool), frozenset(), "dtype bool"),
        (lambda c, i: np.array(["a"] * len(i)), frozenset(), "dtype <U1"),
        (lambda c, i: [0.0] * len(i), frozenset(), "returned list; expected a numpy array"),
        (lambda c, i: torch.zeros(len(i)), frozenset(), "returned Tensor"),
        (lambda c, i: None, frozenset(), "returned NoneType"),
        (lambda c, i: c.features(i)[:, 0], frozenset({"probs"}), "reads 'features' but does not"),
        (lambda c, i: c.labels[i] * 1.0, frozenset(), "reads 'labels'"),
        (
            lambda c, i: c.reduce_mc(i, 3, lambda p: p[0, :, 0]),
            frozenset({"features"}),
            "reads 'mc'",
        ),
    ],
)
def test_output_validation_names_the_plugin(fn, needs, match) -> None:
    est = plugin("my-plugin", needs, fn)()
    with pytest.raises(EstimatorError, match=match) as info:
        score_candidates(est, make_ctx(), np.arange(12))
    assert "estimator 'my-plugin'" in str(info.value)


def test_integer_scores_are_accepted_as_float() -> None:
    est = plugin("int-plugin", frozenset(), lambda c, i: np.arange(len(i), dtype=np.int32))()
    out = score_candidates(est, make_ctx(), np.arange(12))
    assert out.dtype == np.float64 and out.tolist() == list(range(12))


def test_unknown_needs_are_refused_naming_the_plugin() -> None:
    cls = plugin("test-greedy", frozenset({"gradients"}), lambda c, i: np.zeros(len(i)))
    register_estimator("test-greedy")(cls)
    with pytest.raises(EstimatorError, match="'test-greedy' declares unknown needs"):
        build_estimator("test-greedy")
    with pytest.raises(EstimatorError, match="'test-greedy' declares unknown needs"):
        build_estimator("entropy+test-greedy")


def test_unnamed_plugin_is_named_by_its_class() -> None:
    class Anonymous(Estimator):
        def score(self, ctx, candidates):
            return np.zeros(3)

    with pytest.raises(EstimatorError, match="estimator 'Anonymous' returned shape"):
        score_candidates(Anonymous(), make_ctx(), np.arange(12))


# -- the worked example package --------------------------------------------------------------


def test_example_package_declares_the_entry_point() -> None:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["flexsample.estimators"]
    assert eps == {"loss-proxy": "flexsample_example_plugin.scorers"}
    assert (EXAMPLE / "src" / "flexsample_example_plugin" / "scorers.py").is_file()


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    yield
    for mod in [m for m in sys.modules if m.startswith("flexsample_example_plugin")]:
        del sys.modules[mod]


def test_example_plugin_scores_the_label_loss(example_on_path) -> None:
    import_plugin("flexsample_example_plugin.scorers")
    est = build_estimator("loss-proxy")
    ctx = make_ctx()
    cand = np.arange(1, 12, 2)
    got = score_candidates(est, ctx, cand)
    probs = ctx.for_estimator("t", {"probs"}).probs(cand)
    want = -np.log(probs[np.arange(len(cand)), (np.arange(12) % 3)[cand]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    both = build_estimator("loss-proxy+mcdropout", mc_samples=3)
    assert both.needs == {"probs", "labels", "mc"}
    assert score_candidates(both, make_ctx(), cand).shape == (len(cand),)


def test_example_plugin_loads_through_its_entry_point(example_on_path, monkeypatch) -> None:
    ep = EntryPoint("loss-proxy", "flexsample_example_plugin.scorers", "flexsample.estimators")
    monkeypatch.setattr(
        registry_mod, "entry_points", lambda group: [ep] if group == ep.group else []
    )
    reg: Registry = Registry("estimator", "flexsample.estimators")
    ESTIMATORS_before = set(ESTIMATORS._items)
    reg._load()  # imports the module; its decorator registers into the global registry
    assert "loss-proxy" in ESTIMATORS._items
    assert ESTIMATORS._origin["loss-proxy"] == "flexsample_example_plugin.scorers"
    assert ESTIMATORS_before <= set(ESTIMATORS._items)


def test_the_documented_example_runs() -> None:
    import textwrap

    import flexsample.estimators as pkg

    doc = pkg.__doc__
    block = doc.split("register it::\n", 1)[1].split("\nThe contract:", 1)[0]
    namespace: dict = {"__name__": "doc_example"}
    exec(textwrap.dedent(block), namespace)
    est = build_estimator("margin-squared", power=1.0)
    assert est.power == 1.0
    scores = score_candidates(est, make_ctx(), np.arange(12))
    margin = score_candidates(build_estimator("margin"), make_ctx(), np.arange(12))
    np.testing.assert_allclose(scores, margin, atol=1e-6)
