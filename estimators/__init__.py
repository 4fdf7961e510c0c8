"""Scoring estimators: each a few lines of math plus a declaration of what it needs.

Built-in names (``flexsample list``): ``random``, ``entropy``, ``margin``,
``least-confidence``, ``mcdropout``, ``density``, ``info-density``, ``prototype-cosine``
(``typicality`` is its deprecated alias), and the batch-aware selectors ``batchbald``,
``coreset``, ``badge``, ``typiclust``; any two or more joined by '+'
(``mcdropout+density``) are combined by rank of their scores (`build_estimator`).

Writing an estimator (the plugin API)
-------------------------------------
Subclass :class:`flexsample.Estimator` and register it::

    from typing import Annotated

    import numpy as np
    from flexsample import Estimator, register_estimator
    from flexsample.engine.options import opt

    @register_estimator("margin-squared")
    class MarginSquared(Estimator):
        \"\"\"Squared top-2 margin; the first docstring line shows in `flexsample list`.\"\"\"

        needs = frozenset({"probs"})          # what the context must compute, nothing more

        # its options: typed, with help and ranges (`flexsample list margin-squared`)
        def __init__(self, power: Annotated[float, opt("margin exponent", gt=0)] = 2.0):
            self.power = power

        def score(self, ctx, candidates: np.ndarray) -> np.ndarray:
            p = np.sort(ctx.probs(candidates), axis=1)
            return 1.0 - (p[:, -1] - p[:, -2]) ** self.power  # higher = take first

The contract:

* ``name`` -- the registry key (set by the decorator).
* ``needs`` -- a subset of ``features`` (the current classifier's pooled features,
  ``ctx.features(idx)``), ``probs`` (softmax of one deterministic pass, ``ctx.probs(idx)``),
  ``mc`` (MC draws streamed as (T, batch, C) tensors: ``ctx.iter_mc`` / ``ctx.reduce_mc``;
  dropout masks, or a snapshot ensemble under ``--mc-source snapshots``, where T is
  ``ctx.mc_draws(mc_samples)``) and ``labels`` (``ctx.labels``, the whole split's). The
  context computes only what is declared (``random`` costs no forward pass) and raises an
  error naming the estimator when it reads anything else. ``ctx.subset_indices``,
  ``ctx.rng`` (seeded by seed and query step), ``ctx.num_items`` and ``ctx.num_classes``
  are always readable.
* ``score(ctx, candidates)`` -- ``candidates`` are global indices into the training split;
  return a numpy array of shape ``(len(candidates),)``, float or integer, finite, higher =
  taken first. What was declared may be read for *any* training index. The engine checks
  the output (type, shape, dtype, finiteness) and names the estimator in any error.
* ``select(ctx, candidates, k)`` (optional) -- a batch-aware estimator picks its own batch:
  the engine calls it once per class with that class's candidates (ascending global indices)
  and its quota ``0 < k < len(candidates)``, and takes what it returns (a numpy integer array
  of k distinct candidates, checked) instead of the k best scores. ``score`` stays required:
  combinations rank by it. Stochastic ``--acquisition`` applies to scores only.
* Constructor keyword parameters are the estimator's options (``engine.options``): typed,
  optionally ``Annotated[type, opt("help", ge=..., le=...)]``, checked before the run starts,
  shown by ``flexsample list NAME``, set with ``--estimator-opt power=3``, an
  ``[estimator_options]`` section of a config file or ``estimator_options={"power": 3}`` from
  Python. Only the chosen estimator's options are accepted; nothing of the run's own
  configuration (its seed, its learning rate) reaches a plugin by name.
* ``state_dict`` / ``load_state_dict`` (optional) keep any state across checkpoints.

Registration, in order of preference for a package: the entry-point group
``flexsample.estimators`` in its pyproject.toml (``my-scorer = "my_pkg.scorers"``: the
module is imported on first registry lookup, and its decorators register), or
``--plugin my_pkg.scorers`` for a module that is importable but not installed as a package
(``--plugin my_module`` also finds a ``my_module.py`` in the folder the command runs from).
A plugin may not take a built-in name (``entropy``) or a name another plugin registered.
``examples/plugin_package`` is a complete, installable example.

Errors: an exception raised in a plugin's constructor or ``score`` stops the run with one
line (exit code 2) naming the estimator, where it comes from (its entry point or --plugin
module) and the exception; ``--debug`` shows the traceback. Out-of-memory errors keep their
type. The same holds for schedules, allocations and anchor strategies, whose outputs are
checked too (a budget is a finite integer >= 0, ``should_query`` a bool, quotas integers
within what each class has left, anchors distinct integer indices into the training split).
"""

from . import basic, batchbald, density, diversity, functional, typiclust  # noqa: F401  (registers the built-ins)
from .basic import (
    EntropyEstimator,
    LeastConfidenceEstimator,
    MarginEstimator,
    MCDropoutEstimator,
    ProbEstimator,
    RandomEstimator,
)
from .batchbald import BatchBALDEstimator
from .combine import COMBINE_MODES, CombinedEstimator, build_estimator, normalized_ranks
from .density import (
    DensityEstimator,
    InfoDensityEstimator,
    PrototypeCosineEstimator,
    TypicalityEstimator,
    knn_density,
    knn_search,
)
from .diversity import BadgeEstimator, CoresetEstimator
from .typiclust import TypiClustEstimator

__all__ = [
    "COMBINE_MODES",
    "BadgeEstimator",
    "BatchBALDEstimator",
    "CombinedEstimator",
    "CoresetEstimator",
    "DensityEstimator",
    "EntropyEstimator",
    "InfoDensityEstimator",
    "LeastConfidenceEstimator",
    "MCDropoutEstimator",
    "MarginEstimator",
    "ProbEstimator",
    "PrototypeCosineEstimator",
    "RandomEstimator",
    "TypiClustEstimator",
    "TypicalityEstimator",
    "build_estimator",
    "functional",
    "knn_density",
    "knn_search",
    "normalized_ranks",
]
