"""Composition of estimators ('mcdropout+density') by rank average or rank product."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .context import ScoringContext
from .errors import EstimatorError, FlexsampleError
from .interfaces import NEEDS, Estimator
from .options import OptionError, Options, closest, resolve_options
from .registry import ESTIMATORS
from .scoring import check_scores
from .validation import is_builtin, plugin_call, plugin_origin

COMBINE_MODES = ("rank-mean", "rank-product")


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


def split_spec(spec: str) -> list[str]:
    """The estimator names of a spec: 'mcdropout' or 'mcdropout+density'."""
    names = [s.strip() for s in str(spec).split("+")]
    if any(not s for s in names):
        raise OptionError(
            f"bad estimator '{spec}': empty name; combine names like mcdropout+density",
            kind="estimator",
        )
    if len(set(names)) != len(names):
        raise OptionError(f"bad estimator '{spec}': a name appears twice", kind="estimator")
    return names


class CombineOptions(Options):
    """The options of a '+' combination itself (each part has its own)."""

    combine: Literal["rank-mean", "rank-product"] = Field(
        "rank-mean", description="how the parts' ranks merge: rank-mean or rank-product"
    )


def estimator_options(spec: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved options of `--estimator SPEC`, defaults filled in.

    A single estimator: its options, flat. A combination: `combine` and one mapping per part
    (`{"combine": "rank-mean", "density": {"knn": 10, ...}, ...}`). `values` may give an
    option flat (it goes to every part that declares it: `knn` sets density's and
    typiclust's) or inside a part's mapping (that part only). An option no part declares is
    one OptionError line naming the spec and what it takes.
    """
    names = split_spec(spec)
    values = {k: v for k, v in dict(values or {}).items() if v is not None}
    if len(names) == 1:
        name = ESTIMATORS.resolve(names[0], warn=False)
        return ESTIMATORS.resolve_options(name, values).model_dump()
    given_parts = {k: values.pop(k) for k in list(values) if k in names}
    for k, v in given_parts.items():
        if not isinstance(v, Mapping):
            raise OptionError(
                f"estimator '{spec}': options of part '{k}' must be a mapping, not {v!r}",
                kind="estimator",
                component=spec,
                option=k,
            )
    combine = {k: values.pop(k) for k in list(values) if k in CombineOptions.model_fields}
    takes: dict[str, list[str]] = {}
    models = {n: ESTIMATORS.options(n) for n in names}
    for key in values:
        owners = [n for n in names if key in models[n].model_fields]
        if not owners:
            every = sorted({f for m in models.values() for f in m.model_fields} | {"combine"})
            raise OptionError(
                f"estimator '{spec}' has no option '{key}'{closest(key, every)}; its options: "
                f"{', '.join(every)}",
                kind="estimator",
                component=spec,
                option=key,
            )
        takes[key] = owners
    out: dict[str, Any] = resolve_options("estimator", spec, CombineOptions, combine).model_dump()
    for n in names:
        mine = {k: v for k, v in values.items() if n in takes[k]}
        mine.update(given_parts.get(n, {}))
        out[n] = ESTIMATORS.resolve_options(n, mine).model_dump()
    return out


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
