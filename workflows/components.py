"""The components a run chooses, and where each option of the configuration belongs.

A run chooses one component of each kind (`KINDS`: dataset, estimator, policy, allocation,
anchors, loss, sampler); each declares its own options (`engine.options`). The configuration
holds the names and, under `<kind>_options`, the options of the chosen ones only.

Options can be given three ways, which all land in the same place:

* in their section: `[estimator_options] power = 2` in a file, `--estimator-opt power=2` on
  the command line, `estimator_options={"power": 2}` from Python;
* by the flags of DESIGN.md and earlier versions (`--knn 5`, `patience = 5` at the top of a
  file, `run(knn=5)`): each such *shortcut* names an option, and goes to the kind that declares
  it (`place_shortcuts`). A shortcut whose option the chosen component does not declare is
  refused with one line naming who takes it: a value that would change nothing never passes
  silently;
* in a run's config.json from before options were scoped (flat keys, every value present):
  `migrate` places what applied and drops the rest, which changed nothing then either.

A few run-wide values only matter with some choices (`RULES`: `acquisition_beta` with a
stochastic `acquisition`, `snapshots` with `mc_source snapshots`, ...): given without them
they are refused, and they are left out of config.json and the config hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import OptionError, closest

if TYPE_CHECKING:
    from flexsample.engine.registry import Registry

    from .config import RunConfig

KINDS = ("dataset", "estimator", "policy", "allocation", "anchors", "loss", "sampler")

# Flags (and flat keys) that set one option of a component: name -> the kind declaring it.
# They keep the names DESIGN.md and earlier versions gave them; the option has the same name.
SHORTCUTS: dict[str, str] = {
    "imbalance_ratio": "dataset",
    "data_seed": "dataset",
    "data_dir": "dataset",
    "splits_dir": "dataset",
    "image_size": "dataset",
    "skip_missing": "dataset",
    "profile": "dataset",
    "num_classes": "dataset",
    "datalist": "dataset",
    "mc_samples": "estimator",
    "mc_score": "estimator",
    "mc_mode": "estimator",
    "knn": "estimator",
    "density_beta": "estimator",
    "ivf_threshold": "estimator",
    "combine": "estimator",
    "batchbald_samples": "estimator",
    "patience": "policy",
    "query_ratio": "policy",
    "jumps": "policy",
    "difficulty_floor": "allocation",
    "anchor_features": "anchors",
    "anchor_scaling": "anchors",
    "anchor_floor": "anchors",
    "focal_gamma": "loss",
    "cb_beta": "loss",
    "ldam_max_margin": "loss",
    "ldam_scale": "loss",
    "drw_start": "loss",
    "grw_exponent": "loss",
}


def registry(kind: str) -> Registry[Any]:
    """The registry of a component kind (its built-ins are imported on first lookup: they
    import torch; a configuration is checked without them, from the registries' manifest)."""
    from flexsample.engine.registry import DATASETS, LOSSES, PLUGIN_REGISTRIES, SAMPLERS

    if kind in PLUGIN_REGISTRIES:
        return PLUGIN_REGISTRIES[kind]
    regs = {"dataset": DATASETS, "loss": LOSSES, "sampler": SAMPLERS}
    if kind in regs:
        return regs[kind]
    raise ValueError(f"unknown component kind {kind!r}")


def option_fields(kind: str, name: str) -> set[str]:
    """The options component `name` of `kind` declares (for an estimator spec with '+',
    those of any part and `combine`)."""
    if kind == "estimator" and "+" in name:
        from flexsample.engine.specs import split_spec

        parts = split_spec(name)
        return {"combine", *parts}.union(*(option_fields(kind, p) for p in parts))
    return set(registry(kind).options(name).model_fields)


def owners(kind: str, option: str) -> list[str]:
    """The registered `kind` components that declare `option`."""
    reg = registry(kind)
    return [n for n in reg.names() if option in reg.options(n).model_fields]


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def resolve_components(cfg: RunConfig) -> None:
    """Check every chosen component's options and fill in their defaults (in place)."""
    from flexsample.engine.specs import estimator_options

    for kind in KINDS:
        name = getattr(cfg, kind)
        given = getattr(cfg, f"{kind}_options")
        if kind == "estimator":
            if cfg.mc_source == "snapshots":
                _refuse_mc_samples(name, given)
            resolved = estimator_options(name, given)
            if cfg.mc_source == "snapshots":
                _drop_mc_samples(resolved)
        else:
            resolved = registry(kind).resolve_options(name, given).model_dump()
        cfg.__dict__[f"{kind}_options"] = resolved  # no re-validation: it is the resolution
    for kind in KINDS:
        if kind != "estimator":  # no estimator names a path; a '+' spec has no single model
            _check_paths(kind, getattr(cfg, kind), getattr(cfg, f"{kind}_options"))
    if cfg.recipe is not None:
        from .recipes import RECIPES

        cfg.__dict__["recipe_options"] = RECIPES.resolve_options(
            cfg.recipe, cfg.recipe_options
        ).model_dump()
    elif cfg.recipe_options:
        raise OptionError(
            "recipe options were given without --recipe; add --recipe NAME or drop them",
            kind="recipe",
        )
    for rule in RULES:
        if rule.field in cfg.model_fields_set and not rule.applies(cfg):
            raise FlexsampleError(
                f"{flag(rule.field)} applies {rule.when}; this run has {rule.now(cfg)}: drop "
                f"{flag(rule.field)}"
            )


def _check_paths(kind: str, name: str, options: Mapping[str, Any]) -> None:
    """The options `name` declares with `opt(..., path=...)` name an existing folder or file:
    checked with the names and ranges, before torch is imported or anything is built."""
    from flexsample.engine.options import path_kind

    fields = registry(kind).options(name).model_fields
    for key, value in options.items():
        what = path_kind(fields[key]) if key in fields else None
        if what is None or value is None:
            continue
        path = Path(str(value)).expanduser()
        if not (path.is_dir() if what == "folder" else path.is_file()):
            raise FlexsampleError(f"{flag(key)} not found or not a {what}: {value}")


def _mc_sample_keys(options: Mapping[str, Any]) -> bool:
    return "mc_samples" in options or any(
        isinstance(v, Mapping) and "mc_samples" in v for v in options.values()
    )


def _refuse_mc_samples(name: str, given: Mapping[str, Any]) -> None:
    if _mc_sample_keys(given):
        raise OptionError(
            "--mc-samples does not apply under --mc-source snapshots: the draws are the kept "
            "snapshots (--snapshots sets how many); drop --mc-samples",
            kind="estimator",
            component=name,
            option="mc_samples",
        )


def _drop_mc_samples(resolved: dict[str, Any]) -> None:
    resolved.pop("mc_samples", None)
    for v in resolved.values():
        if isinstance(v, dict):
            v.pop("mc_samples", None)


@dataclass(frozen=True)
class Rule:
    """A run-wide value that matters only with some choices."""

    field: str
    applies: Callable[[RunConfig], bool]
    when: str  # "with --acquisition power, softmax or softrank"
    now: Callable[[RunConfig], str]  # what the run has instead: "--acquisition topk"
    controls: tuple[str, ...]  # the fields `applies` reads


def _uses_ssl(cfg: RunConfig) -> bool:
    return cfg.init == "ssl" or cfg.option("anchors", "anchor_features") in ("ssl", "auto")


def _ssl_now(cfg: RunConfig) -> str:
    feats = cfg.option("anchors", "anchor_features")
    anchors = f"--anchors {cfg.anchors}" + (f" --anchor-features {feats}" if feats else "")
    return f"--init {cfg.init} and {anchors}"


RULES: tuple[Rule, ...] = (
    Rule(
        "acquisition_beta",
        lambda c: c.acquisition != "topk",
        "with --acquisition power, softmax or softrank",
        lambda c: f"--acquisition {c.acquisition}",
        ("acquisition",),
    ),
    Rule(
        "snapshots",
        lambda c: c.mc_source == "snapshots",
        "with --mc-source snapshots",
        lambda c: f"--mc-source {c.mc_source}",
        ("mc_source",),
    ),
    Rule(
        "tau",
        lambda c: c.decouple == "tau-norm",
        "with --decouple tau-norm",
        lambda c: f"--decouple {c.decouple}",
        ("decouple",),
    ),
    Rule(
        "decouple_epochs",
        lambda c: c.decouple == "crt",
        "with --decouple crt (lws keeps the authors' 5 epochs, tau-norm has none)",
        lambda c: f"--decouple {c.decouple}",
        ("decouple",),
    ),
    Rule(
        "momentum",
        lambda c: c.optimizer == "sgd",
        "with --optimizer sgd",
        lambda c: f"--optimizer {c.optimizer}",
        ("optimizer",),
    ),
    Rule(
        "cosine",
        lambda c: c.restart == "none",
        "with --restart none (one cosine over the whole budget)",
        lambda c: f"--restart {c.restart}",
        ("restart",),
    ),
    *(
        Rule(
            name,
            _uses_ssl,
            "with self-supervised features (--init ssl, or --anchor-features ssl or auto on "
            "prototype anchors)",
            _ssl_now,
            ("init", "anchors", "anchors_options"),
        )
        for name in ("ssl_epochs", "ssl_method", "ssl_batch_size")
    ),
)


def drop_overruled(values: dict[str, Any], layer_of: Mapping[str, int]) -> None:
    """Drop run-wide values a higher layer made meaningless: a base config's `tau` once the
    bench grid's baseline sets `--decouple none` (as options of a component no longer chosen
    are dropped). A value given in the same layer as its condition, or above it, stays, and
    is refused if it does not apply."""
    from .config import RunConfig

    probe = RunConfig.model_construct(
        **{k: v for k, v in values.items() if k in RunConfig.model_fields}
    )
    for rule in RULES:
        if rule.field not in values or rule.applies(probe):
            continue
        top = max((layer_of.get(c, -1) for c in rule.controls), default=-1)
        if layer_of.get(rule.field, -1) < top:
            del values[rule.field]


def inapplicable(cfg: RunConfig) -> set[str]:
    """The run-wide fields that change nothing in this configuration."""
    return {rule.field for rule in RULES if not rule.applies(cfg)}


def place_shortcuts(values: dict[str, Any], given: Mapping[str, Any], *, strict: bool) -> None:
    """Move shortcut keys of `given` (`knn`, `patience`, ...) into `values`' option sections.

    `values` holds the component names already decided. strict (flags, config files): a
    shortcut the chosen component does not declare is one line naming the components that
    do; lenient (an old config.json, where every key was written whether it applied or not):
    it is dropped.
    """
    from .config import RunConfig

    for key, value in given.items():
        kind = SHORTCUTS.get(key)
        if kind is None:
            continue
        name = values.get(kind, RunConfig.model_fields[kind].default)
        section = values.setdefault(f"{kind}_options", {})
        try:
            takes = option_fields(kind, name)
        except FlexsampleError:
            if strict:
                raise
            section[key] = value  # a component not registered here (a plugin's): kept as given
            continue
        if key in takes:
            section[key] = value
            continue
        if not strict:
            continue
        if kind == "estimator" and key == "combine":
            pair = f"{name}+density" if name != "density" else "mcdropout+density"
            raise OptionError(
                f"--combine merges the parts of an estimator combination (e.g. --estimator "
                f"{pair}); the chosen estimator '{name}' is one estimator: drop --combine",
                kind=kind,
                component=name,
                option=key,
            )
        who = owners(kind, key)
        whom = ", ".join(f"'{n}'" for n in who) if who else "no registered component"
        raise OptionError(
            f"{flag(key)} is an option of {kind} {whom}; the chosen {kind} '{name}' does not "
            f"take it: drop {flag(key)}" + (f" or choose --{kind} {who[0]}" if who else ""),
            kind=kind,
            component=name,
            option=key,
        )


def is_old_layout(values: Mapping[str, Any]) -> bool:
    """A config saved before options were scoped: flat option keys, no option sections."""
    return not any(f"{k}_options" in values for k in KINDS) and any(k in values for k in SHORTCUTS)


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """An old flat config (a run's config.json from before scoped options) in today's layout.

    Options of the chosen components go to their sections; options of components that were
    not chosen, and run-wide values that did not apply, are dropped: they changed nothing.
    """
    from .config import RunConfig

    out = {k: v for k, v in values.items() if k not in SHORTCUTS}
    place_shortcuts(out, {k: v for k, v in values.items() if k in SHORTCUTS}, strict=False)
    for kind in KINDS:  # None meant "the component's default" in the flat layout
        section = out.get(f"{kind}_options")
        if section is not None:
            out[f"{kind}_options"] = {k: v for k, v in section.items() if v is not None}
    fields = {k: v for k, v in out.items() if k in RunConfig.model_fields}
    probe = RunConfig.model_construct(**fields)
    for rule in RULES:
        if rule.field in out and not rule.applies(probe):
            del out[rule.field]
    if out.get("mc_source") == "snapshots":
        out.get("estimator_options", {}).pop("mc_samples", None)
    return out


def flat_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as one flat mapping: run values, and each chosen component's options under
    their own names (a combination's parts as `part.option`), for tables that compare cells."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not (key.endswith("_options") and isinstance(value, Mapping)):
            out[key] = value
            continue
        for option, v in value.items():
            if isinstance(v, Mapping):
                out.update({f"{option}.{k}": x for k, x in v.items()})
            else:
                out[option] = v
    return out


def unknown_key(key: str, source: str) -> FlexsampleError:
    """The line for a key that is neither a run value, a shortcut nor an option section."""
    from .config import RunConfig

    accepted = sorted(set(RunConfig.model_fields) | set(SHORTCUTS))
    return FlexsampleError(
        f"unknown key '{key}' in {source}{closest(key, accepted)}; accepted keys: "
        f"{', '.join(accepted)}"
    )
