"""The run configuration: one pydantic model, loadable from TOML, YAML or a run's config.json.

Precedence: defaults < config file < flags given on the command line. Unknown keys and
out-of-range values are rejected with one line naming the key and what is accepted. Every
number is finite and bounded (the range is in each flag's --help and in the error), and a
boolean is never read as a number (`seed = true` is a type error, not seed 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flexsample.engine.errors import FlexsampleError

from .components import (
    KINDS,
    SHORTCUTS,
    drop_overruled,
    is_old_layout,
    migrate,
    place_shortcuts,
    unknown_key,
)

# Upper bounds no study reaches but that keep the program alive: past them a value hangs,
# overflows a seed or exhausts memory long after the run started.
SEED_MAX = 2**32 - 1  # numpy's legacy RandomState and every torch seed path accept it
EPOCHS_MAX = 100_000
BATCH_MAX = 65_536


def _num(v: float) -> str:
    """A bound as a user types it: 4294967295, 0.001, 10 (never 4.29497e+09)."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def range_text(limits: dict[str, Any]) -> str:
    """'1 <= x <= 100000' from a Field's ge/gt/le/lt: what the flag accepts."""
    low = [f"{_num(limits[k])} {op}" for k, op in (("ge", "<="), ("gt", "<")) if k in limits]
    high = [f"{op} {_num(limits[k])}" for k, op in (("le", "<="), ("lt", "<")) if k in limits]
    return " ".join([*low, "x", *high])


def _f(default: Any, help: str, panel: str, **limits: Any) -> Any:
    """A config field with its --help text (accepted range appended) and its help panel."""
    extra: dict[str, Any] = {"panel": panel}
    if limits:
        extra["range"] = range_text(limits)
        help = f"{help} (accepted: {extra['range']})"
    return Field(default, description=help, json_schema_extra=extra, **limits)


DATA, CURRICULUM, SCORING, MODEL, LOSSES, RUN = (
    "Data",
    "Curriculum",
    "Scoring",
    "Model and training",
    "Long-tail baselines",
    "Run",
)


class RunConfig(BaseModel):
    """Everything that determines a run's result (the output folder is not part of it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # data
    dataset: str = _f("digits-lt", "dataset name (see `flexsample list`)", DATA)
    cache_dir: str | None = _f(None, "decoded-image and SSL-weights cache folder", DATA)
    # curriculum
    policy: str = _f("linear", "schedule: when and how much the subset grows", CURRICULUM)
    allocation: str = _f("difficulty", "how a step's budget splits across classes", CURRICULUM)
    anchors: str = _f("prototype", "anchor strategy: the starting subset", CURRICULUM)
    ssl_epochs: int = _f(
        20,
        "epochs of self-supervised pre-training (ssl features)",
        CURRICULUM,
        ge=1,
        le=EPOCHS_MAX,
    )
    ssl_method: Literal["mocov2", "simclr", "byol"] = _f(
        "mocov2",
        "self-supervised method (ssl features, --init ssl): mocov2, simclr or byol",
        CURRICULUM,
    )
    ssl_batch_size: int | None = _f(
        None,
        "self-supervised pre-training batch size (default: fits the device; at 224 px on a "
        "CPU 32 for mocov2, 16 for simclr and byol; on a GPU 256 and 128; larger for "
        "smaller images, up to 256)",
        CURRICULUM,
        ge=2,
        le=BATCH_MAX,
    )
    rounds: int = _f(
        5,
        "rounds; the epoch budget is rounds x epochs-per-round",
        CURRICULUM,
        ge=1,
        le=EPOCHS_MAX,
    )
    epochs_per_round: int = _f(20, "epochs per round", CURRICULUM, ge=1, le=EPOCHS_MAX)
    budget: Literal["epochs", "samples"] = _f(
        "epochs",
        "what an epoch costs: epochs (one pass over the current subset) or samples (as many "
        "samples as the full training set holds, the sampler's order over the subset repeated: "
        "every method processes as many training samples as the full-set baseline)",
        CURRICULUM,
    )
    # scoring
    estimator: str = _f(
        "mcdropout", "scoring estimator; combine two with '+', e.g. mcdropout+density", SCORING
    )
    score_batch_size: int = _f(256, "batch size of scoring passes", SCORING, ge=1, le=BATCH_MAX)
    acquisition: Literal["topk", "power", "softmax", "softrank"] = _f(
        "topk",
        "how a class's quota is drawn from its scores: topk (the best), or stochastic batch "
        "acquisition power, softmax or softrank (Kirsch et al. 2023), seeded by (seed, step)",
        SCORING,
    )
    acquisition_beta: float = _f(
        1.0, "stochastic acquisition: inverse temperature beta", SCORING, gt=0, le=1000
    )
    mc_source: Literal["dropout", "snapshots"] = _f(
        "dropout",
        "where MC draws come from: dropout (T masked passes) or snapshots (the best weights "
        "of the last --snapshots rounds, an ensemble)",
        SCORING,
    )
    snapshots: int = _f(
        5, "snapshots: how many rounds' best weights are kept as draws", SCORING, ge=2, le=1000
    )
    # model and training
    backbone: str = _f(
        "auto",
        "small-cnn, any timm model name, or auto (small-cnn up to 32 px, else resnet18)",
        MODEL,
    )
    pretrained: str | None = _f(
        None,
        "backbone weights: imagenet (timm's, from the Hugging Face cache, downloaded once if "
        "missing unless HF_HUB_OFFLINE is set) or a local weights file",
        MODEL,
    )
    init: Literal["random", "ssl"] = _f(
        "random", "classifier initialisation: random or ssl (self-supervised weights)", MODEL
    )
    dropout: float = _f(0.5, "dropout before the classifier", MODEL, ge=0, lt=1)
    batch_size: int = _f(64, "training batch size", MODEL, ge=2, le=BATCH_MAX)
    lr: float = _f(3e-3, "peak learning rate (AdamW, cosine; see --restart)", MODEL, gt=0, le=10)
    checkpoint_on: Literal["val", "smoothed", "last"] = _f(
        "val",
        "which weights the test reports: val (the epoch with the best validation balanced "
        "accuracy), smoothed (the best mean over the last 3 epochs: fewer validation images "
        "make single epochs noisy) or last (the last epoch)",
        CURRICULUM,
    )
    restart: Literal["fresh", "warm", "none"] = _f(
        "fresh",
        "optimizer and learning rate at each round start or query: fresh (a new AdamW and a "
        "cosine over the round's remaining epochs), warm (AdamW moments kept, the cosine "
        "restarted) or none (one AdamW and one cosine over the whole epoch budget)",
        MODEL,
    )
    lr_subset_scale: float = _f(
        0.0,
        "Q: a round's peak learning rate is lr x (subset size / training set size)^Q, smaller "
        "steps on small subsets (0 = off, 0.5 square root, 1 linear; with --restart none each "
        "epoch's rate is scaled)",
        MODEL,
        ge=0,
        le=4,
    )
    optimizer: Literal["adamw", "sgd"] = _f(
        "adamw",
        "optimizer: adamw, or sgd (with --momentum; the authors' recipe: lr 0.01, momentum 0.9)",
        MODEL,
    )
    momentum: float = _f(0.9, "sgd: momentum", MODEL, ge=0, lt=1)
    cosine: Literal["epochs", "steps"] = _f(
        "epochs",
        "with --restart none, what the one cosine counts: epochs (one value per epoch over the "
        "epoch budget) or steps (stepped per batch over epoch budget x full training set / "
        "batch size steps, so small early subsets use few of them: the authors' schedule)",
        MODEL,
    )
    weight_decay: float = _f(1e-4, "weight decay (AdamW's decoupled, SGD's L2)", MODEL, ge=0, le=10)
    sync_bn: bool = _f(
        False,
        "under torchrun: SyncBatchNorm (batch statistics over all ranks' shares of a batch) "
        "instead of each rank's own",
        MODEL,
    )
    workers: int | None = _f(
        None,
        "DataLoader worker processes for image files (default: one per core, up to 8; none "
        "for a cached eval pass)",
        MODEL,
        ge=0,
        le=256,
    )
    # long-tail baselines
    loss: str = _f("ce", "training loss (see `flexsample list`)", LOSSES)
    sampler: str = _f("instance", "epoch sampler: instance, class-balanced or sqrt", LOSSES)
    mixup: float = _f(0.0, "mixup alpha (0 = off)", LOSSES, ge=0, le=100)
    logit_adjust: float = _f(
        0.0, "post-hoc logit adjustment tau at evaluation", LOSSES, ge=0, le=10
    )
    decouple: Literal["none", "crt", "lws", "tau-norm"] = _f(
        "none",
        "second stage after the run (Kang et al. 2020): crt (classifier re-trained with "
        "class-balanced sampling on frozen features), lws (learnable weight scaling) or "
        "tau-norm (classifier weight normalisation)",
        LOSSES,
    )
    tau: float | None = _f(
        None,
        "tau-norm: normalisation power (default: chosen on validation)",
        LOSSES,
        ge=0,
        le=10,
    )
    decouple_epochs: int = _f(
        10,
        "crt: epochs of the second stage (lws trains its scales for the authors' 5)",
        LOSSES,
        ge=1,
        le=EPOCHS_MAX,
    )
    # run
    seed: int = _f(0, "training seed", RUN, ge=0, le=SEED_MAX)
    device: str = _f(
        "auto",
        "auto, cpu, cuda or cuda:N (under torchrun: each rank takes LOCAL_RANK's GPU)",
        RUN,
    )
    dist_timeout: float = _f(
        600.0,
        "under torchrun: seconds a rank waits for the others in a collective before it fails",
        RUN,
        gt=0,
        le=86400,
    )
    plugin: list[str] = Field(
        default_factory=list,
        description="module imported first, registering its estimators or policies (repeatable)",
        json_schema_extra={"panel": RUN},
    )
    recipe: str | None = _f(
        None,
        "a named bundle of option values under your own (see `flexsample list recipe`): "
        "paper (the authors' procedure) or paper-control (its full-set control)",
        RUN,
    )
    recipe_options: dict[str, Any] = Field(default_factory=dict)
    # the options of each chosen component, defaults filled in (see `resolve_components`)
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    estimator_options: dict[str, Any] = Field(default_factory=dict)
    policy_options: dict[str, Any] = Field(default_factory=dict)
    allocation_options: dict[str, Any] = Field(default_factory=dict)
    anchors_options: dict[str, Any] = Field(default_factory=dict)
    loss_options: dict[str, Any] = Field(default_factory=dict)
    sampler_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> RunConfig:
        """Each chosen component's options checked against what it declares, defaults filled;
        run-wide values that only apply to some choices refused when given without them."""
        from .components import resolve_components

        try:
            resolve_components(self)
        except FlexsampleError as exc:
            message = {"message": flag_text(exc)}
            raise PydanticCustomError("flexsample", "{message}", message) from None
        return self

    def option(self, kind: str, name: str, default: Any = None) -> Any:
        """The value of option `name` of the chosen `kind` component (`default` if it has
        no such option)."""
        return getattr(self, f"{kind}_options").get(name, default)

    def option_section(self, kind: str) -> dict[str, Any]:
        """The resolved options of the chosen `kind` component."""
        return dict(getattr(self, f"{kind}_options"))

    @property
    def data_seed(self) -> int:
        """The dataset's split seed (0 for datasets with fixed splits)."""
        return int(self.option("dataset", "data_seed", 0))

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The values that apply: a run-wide value that only matters for other choices
        (`acquisition_beta` under `--acquisition topk`) is left out, so that neither
        config.json nor the config hash carries it."""
        from .components import inapplicable

        exclude = set(kwargs.pop("exclude", None) or ()) | inapplicable(self)
        return super().model_dump(exclude=exclude, **kwargs)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`seed = true` is a type error: pydantic would quietly read a boolean as 1."""
        if isinstance(value, bool) and info.field_name in NUMERIC_FIELDS:
            kind = "an integer" if NUMERIC_FIELDS[info.field_name] is int else "a number"
            raise PydanticCustomError(
                "bool_not_number", "expected {kind}, got a boolean", {"kind": kind}
            )
        return value


FIELD_NAMES = tuple(RunConfig.model_fields)


def stable_hash(obj: Any) -> str:
    """sha256 of `obj` as sorted, compact JSON: the same config gives the same key anywhere."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# field -> int or float, for the numeric fields (their optional forms included)
NUMERIC_FIELDS: dict[str, type] = {
    name: kind
    for name, f in RunConfig.model_fields.items()
    for kind in (int, float)
    if f.annotation is kind or f.annotation == kind | None
}


def field_range(name: str) -> str | None:
    """What a numeric field accepts, e.g. 'an integer, 0 <= x <= 4294967295' (None: not numeric)."""
    kind = NUMERIC_FIELDS.get(name)
    if kind is None:
        return None
    extra = RunConfig.model_fields[name].json_schema_extra or {}
    noun = "an integer" if kind is int else "a finite number"
    bounds = extra.get("range") if isinstance(extra, dict) else None
    return f"{noun}, {bounds}" if bounds else noun


def flag_text(exc: FlexsampleError) -> str:
    """An option error as the command line says it: an option that a flag sets (`--knn`) is
    named by its flag."""
    from flexsample.engine.options import OptionError

    text = str(exc)
    if isinstance(exc, OptionError) and exc.option and SHORTCUTS.get(exc.option) == exc.kind:
        flag = "--" + exc.option.replace("_", "-")
        own = f"invalid {exc.kind} '{exc.component}' option '{exc.option}' ="
        if text.startswith(own):
            text = f"invalid {flag} ={text[len(own) :]} ({exc.kind} '{exc.component}' option)"
    return text


def describe_error(exc: ValidationError, source: str) -> str:
    """The first validation problem as one line: key, what is wrong, what is accepted."""
    err = exc.errors()[0]
    if err["type"] == "flexsample":  # already a whole line (a component's option, a rule)
        text = str((err.get("ctx") or {}).get("message", err["msg"]))
        return text if source == "the command line" else f"{text} (in {source})"
    key = ".".join(str(p) for p in err["loc"]) or "config"
    flag = "--" + key.replace("_", "-")
    if err["type"] == "extra_forbidden":
        from .components import unknown_key

        return str(unknown_key(key, source))
    value = err.get("input")
    accepted = field_range(key)
    tail = f"; accepted: {accepted}" if accepted else ""
    return f"invalid {flag} = {value!r} in {source}: {err['msg']}{tail}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Key/value pairs from TOML, YAML or JSON (a run's config.json: its `config` part, in
    today's layout even when it was written before options were scoped)."""
    p = Path(path)
    if not p.is_file():
        raise FlexsampleError(f"config file {p} does not exist")
    text_loaders = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
    kind = text_loaders.get(p.suffix.lower())
    if kind is None:
        raise FlexsampleError(
            f"config file {p}: unknown format '{p.suffix}'; accepted: .toml, .yaml, .yml, .json"
        )
    try:
        text = p.read_text(encoding="utf-8")
        if kind == "toml":  # TOML itself refuses a key given twice
            data = tomllib.loads(text)
        elif kind == "yaml":
            data = _yaml_unique(text)
        else:
            data = json.loads(text, object_pairs_hook=_json_unique)
    except DuplicateKeyError as exc:
        raise FlexsampleError(f"config file {p}: {exc}; give each key once") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FlexsampleError(f"config file {p} is not valid {kind.upper()}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FlexsampleError(f"config file {p} must hold a mapping of keys to values")
    if "config" in data and "split_hash" in data:  # a run's config.json
        values = normal_keys(data["config"])
        return migrate(values) if is_old_layout(values) else values
    return normal_keys(data)


class DuplicateKeyError(ValueError):
    """A key given twice in one mapping of a config file (the last would silently win)."""


def _json_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key '{key}' appears twice")
        out[key] = value
    return out


def _yaml_unique(text: str) -> Any:
    """yaml.safe_load, refusing a key given twice in one mapping."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"key '{key}' appears twice (the second on line {line})")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=UniqueKeys)  # noqa: S506 (a SafeLoader subclass)


def normal_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keys spelled with '-' or '_' (`epochs-per-round`), as field names; option sections'
    keys too."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = str(k).replace("-", "_")
        if key.endswith("_options") and isinstance(v, Mapping):
            v = normal_keys(v)
        out[key] = v
    return out


Layer = tuple[str, Mapping[str, Any]]  # (where the values come from, the values)


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of `layers` (lowest precedence first) merged, and which layer set each key.

    Component names win like any value; when a layer chooses another component of a kind,
    the options lower layers gave the old one are dropped (they were options of a component
    no longer chosen). Shortcuts (`knn`, `patience`) go to the section of the kind declaring
    them, and are refused when the chosen component does not take them.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layer_of: dict[str, int] = {}
    for index, (source, raw) in enumerate(layers):
        layer = normal_keys(raw)
        for key in layer:
            if key not in RunConfig.model_fields and key not in SHORTCUTS:
                raise unknown_key(key, source)
        for kind in KINDS:
            current = values.get(kind, RunConfig.model_fields[kind].default)
            if kind in layer and layer[kind] != current:
                values.pop(f"{kind}_options", None)
        for key, value in layer.items():
            if key in SHORTCUTS:
                continue
            origin[key] = source
            layer_of[key] = index
            if key.endswith("_options"):
                if not isinstance(value, Mapping):
                    raise FlexsampleError(
                        f"{key} in {source} must be a mapping of option names to values "
                        f"(a [{key}] section), not {value!r}"
                    )
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
        shortcuts = {k: v for k, v in layer.items() if k in SHORTCUTS}
        try:
            place_shortcuts(values, shortcuts, strict=True)
        except FlexsampleError as exc:
            where = "" if source == "the command line" else f" (in {source})"
            raise FlexsampleError(f"{exc}{where}") from None
        for key in shortcuts:
            origin[f"{SHORTCUTS[key]}_options"] = source
            layer_of[f"{SHORTCUTS[key]}_options"] = index
    drop_overruled(values, layer_of)
    return values, origin


def build_config(layers: Sequence[Layer]) -> RunConfig:
    """The RunConfig of `layers` (lowest precedence first, over the defaults), with a bad
    value as one FlexsampleError line naming the key and the layer it came from. Plugins
    named in any layer are imported first, so their components and options are known; a
    recipe named in any layer adds its values under all of them."""
    return explain_config(layers)[0]


def explain_config(layers: Sequence[Layer]) -> tuple[RunConfig, list[str]]:
    """`build_config`, and the keys whose value came from the recipe (`--print-config`)."""
    values, origin = merge_layers(layers)
    load_plugins(values.get("plugin") or [])
    name = values.get("recipe")
    from_recipe: list[str] = []
    if name is not None:
        from .recipes import RECIPES

        if not isinstance(name, str):
            raise FlexsampleError(f"--recipe must be a recipe name, not {name!r}")
        recipe = RECIPES.build(name, values.get("recipe_options") or {})
        source = f"recipe {name}"
        values, origin = merge_layers([(source, recipe.values(values)), *layers])
        from_recipe = sorted(k for k, v in origin.items() if v == source)
    return _validated(values, origin), from_recipe


def _validated(values: dict[str, Any], origin: dict[str, str]) -> RunConfig:
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        where = origin.get(str(loc[0]), "the command line") if loc else "the command line"
        if not loc:  # a model-level error: blame the highest layer that set a component
            where = next(
                (origin[k] for k in [*KINDS, *(f"{k}_options" for k in KINDS)] if k in origin),
                "the command line",
            )
        raise FlexsampleError(describe_error(exc, where)) from None


def load_plugins(modules: Sequence[str]) -> None:
    """Import each --plugin module (their decorators register components)."""
    from flexsample.engine.registry import import_plugin

    for m in modules or []:
        if not isinstance(m, str):
            return  # the type error is the model's to report
        import_plugin(m)


def validate_config(values: Mapping[str, Any], source: str = "the command line") -> RunConfig:
    """A RunConfig from one mapping of values (a bench grid's swept values, a saved cell),
    with a bad value as one FlexsampleError line naming the flag."""
    return build_config([(source, values)])


def resolve_config(file: str | Path | None, flags: Mapping[str, Any]) -> RunConfig:
    """defaults < file < flags (flags given as None or [] are ignored)."""
    layers: list[Layer] = []
    if file is not None:
        layers.append((f"config file {file}", read_config_file(file)))
    given = {k: v for k, v in flags.items() if v is not None and v != [] and v != {}}
    layers.append(("the command line", given))
    return build_config(layers)
