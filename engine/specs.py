"""What `--estimator SPEC` names and takes, without building it (no torch).

A spec is one registered name or names joined by '+' ('mcdropout+density'); its options are
those of each part plus the combination's own (`combine`). Resolving them needs only the
registry's options models, so a configuration is checked before torch is imported;
`engine.combine` builds the estimator itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from .options import OptionError, Options, closest, resolve_options
from .registry import ESTIMATORS

COMBINE_MODES = ("rank-mean", "rank-product")


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
