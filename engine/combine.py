"""Composition of estimators ('mcdropout+density') by rank average or rank product."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .context import ScoringContext
from .errors import EstimatorError, FlexsampleError
from .interfaces import NEEDS, Estimator
from .options import OptionError
from .registry import ESTIMATORS
from .scoring import check_scores

# re-exported: the spec functions lived here before engine.specs
from .specs import (  # noqa: F401
    COMBINE_MODES,
    CombineOptions,
    estimator_options,
    split_spec,
)
from .validation import is_builtin, plugin_call, plugin_origin


def normalized_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks divided by n, in (0, 1]: the highest score gets 1; ties share their mean rank.

    Ranks make scores on different scales (nats, cosines) comparable without tuning.
    """
    x = np.asarray(scores)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], n]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks / n


class CombinedEstimator(Estimator):
    """Several estimators at once: each ranks the candidates, the ranks are averaged
    (`rank-mean`, default) or multiplied (`rank-product`). Higher = take first.

    Ranks are taken over all candidates of the query step. Each part reads the context
    under its own declaration, so an undeclared read still names the part at fault; the
    context's caches are shared, so parts needing features run the backbone once.
    """

    def __init__(self, parts: Sequence[Estimator], combine: str = "rank-mean") -> None:
        if len(parts) < 2:
            raise FlexsampleError("a combined estimator needs at least two parts")
        if combine not in COMBINE_MODES:
            raise OptionError(
                f"unknown combine '{combine}'; accepted: {', '.join(COMBINE_MODES)}",
                kind="estimator",
                option="combine",
            )
        self.parts = list(parts)
        self.combine = combine
        self.name = "+".join(part_name(p) for p in self.parts)  # type: ignore[misc]
        self.needs = frozenset().union(*(p.needs for p in self.parts))  # type: ignore[misc]

    def score(self, ctx: ScoringContext, candidates: np.ndarray) -> np.ndarray:
        n = len(candidates)
        total = np.zeros(n) if self.combine == "rank-mean" else np.ones(n)
        for part in self.parts:
            name = part_name(part)
            out = plugin_call(
                "estimator", part, "score", ctx.for_estimator(name, part.needs), candidates
            )
            origin = None if is_builtin(part) else plugin_origin("estimator", part)
            ranks = normalized_ranks(check_scores(name, out, n, origin=origin))
            if self.combine == "rank-mean":
                total += ranks / len(self.parts)
            else:
                total *= ranks
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, s in zip(self.parts, state.get("parts", []), strict=False):
            part.load_state_dict(s)


def part_name(est: Estimator) -> str:
    return getattr(est, "name", "") or type(est).__name__


def build_estimator(
    spec: str, /, options: Mapping[str, Any] | None = None, **kwargs: Any
) -> Estimator:
    """The estimator for `--estimator SPEC`: a registered name, or names joined by '+'.

    `options` (or keyword arguments) as `estimator_options` takes them; None values mean
    "the default". Parts of a combination are ranked and merged by `combine`.
    """
    resolved = estimator_options(spec, {**dict(options or {}), **kwargs})
    names = split_spec(spec)
    if len(names) == 1:
        return _create(names[0], resolved)
    parts = [_create(n, resolved[n]) for n in names]
    return CombinedEstimator(parts, combine=resolved["combine"])


def _create(name: str, options: Mapping[str, Any]) -> Estimator:
    est = ESTIMATORS.build(name, options)
    unknown = set(getattr(est, "needs", ())) - NEEDS
    if unknown:
        raise EstimatorError(
            f"estimator '{name}' declares unknown needs {sorted(unknown)}; "
            f"accepted: {sorted(NEEDS)}"
        )
    return est
