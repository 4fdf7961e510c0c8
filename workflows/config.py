"""The run configuration: one pydantic model, loadable from TOML, YAML or a run's config.json.

Precedence: defaults < config file < flags given on the command line. Unknown keys and
out-of-range values are rejected with one line naming the key and what is accepted. Every
number is finite and bounded (the range is in each flag's --help and in the error), and a
boolean is never read as a number (`seed = true` is a type error, not seed 1).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from flexsample.engine.errors import FlexsampleError

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
    data_dir: str | None = _f(None, "folder holding the dataset's images", DATA)
    splits_dir: str | None = _f(None, "folder holding split manifests (default: data dir)", DATA)
    imbalance_ratio: float = _f(
        100.0,
        "imbalance ratio r = n_max / n_min (ISIC: the official split 100, 200 or 500)",
        DATA,
        ge=1,
        le=1_000_000,
    )
    data_seed: int = _f(0, "seed of the data split (not of training)", DATA, ge=0, le=SEED_MAX)
    image_size: int | None = _f(
        None, "input resolution (default: the dataset's)", DATA, ge=4, le=4096
    )
    skip_missing: bool = _f(False, "skip images listed but absent or unreadable", DATA)
    cache_dir: str | None = _f(None, "decoded-image and SSL-weights cache folder", DATA)
    profile: str | None = _f(
        None,
        "synthetic-lt class counts: isic2019, isic2019-r100, "
        "isic2019-r200, isic2019-r500, isic14, exponential",
        DATA,
    )
    num_classes: int | None = _f(
        None, "synthetic-lt: number of classes (exponential profile)", DATA, ge=2, le=10_000
    )
    # curriculum
    policy: str = _f("linear", "schedule: when and how much the subset grows", CURRICULUM)
    allocation: str = _f("difficulty", "how a step's budget splits across classes", CURRICULUM)
    anchors: str = _f("prototype", "anchor strategy: the starting subset", CURRICULUM)
    anchor_features: Literal["auto", "pixels", "pretrained", "ssl"] = _f(
        "auto", "features for prototype anchors: auto, pixels, pretrained or ssl", CURRICULUM
    )
    anchor_scaling: float = _f(
        0.1, "anchor imbalance compression s: anchors keep ratio r*s", CURRICULUM, gt=0, le=1
    )
    anchor_floor: int = _f(2, "minimum anchors per class", CURRICULUM, ge=1, le=1_000_000)
    ssl_epochs: int = _f(
        20, "epochs of self-supervised pre-training (ssl features)", CURRICULUM, ge=1,
        le=EPOCHS_MAX,
    )
    ssl_method: Literal["mocov2", "simclr", "byol"] = _f(
        "mocov2", "self-supervised method (ssl features, --init ssl): mocov2, simclr or byol",
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
        5, "rounds; the epoch budget is rounds x epochs-per-round", CURRICULUM, ge=1,
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
    patience: int = _f(
        3, "adaptive: epochs without improvement before a query", CURRICULUM, ge=1,
        le=EPOCHS_MAX,
    )
    query_ratio: float = _f(
        0.25, "adaptive: fraction of the remaining pool added per query", CURRICULUM, gt=0, le=1
    )
    jumps: int = _f(3, "step: number of jumps", CURRICULUM, ge=1, le=EPOCHS_MAX)
    difficulty_floor: float = _f(
        0.05, "difficulty: weight floor, as a fraction of the mean weight", CURRICULUM, ge=0,
        le=1,
    )
    # scoring
    estimator: str = _f(
        "mcdropout", "scoring estimator; combine two with '+', e.g. mcdropout+density", SCORING
    )
    mc_samples: int = _f(20, "MC-dropout draws T", SCORING, ge=2, le=10_000)
    mc_score: Literal["bald", "entropy", "variation-ratio", "std"] = _f(
        "bald", "MC-dropout score: bald, entropy, variation-ratio or std", SCORING
    )
    mc_mode: Literal["head", "full"] = _f(
        "head", "MC-dropout mode: head (backbone once) or full (T complete passes)", SCORING
    )
    knn: int | None = _f(
        None,
        "neighbours k of the kNN estimators (default: each estimator's own: density and "
        "info-density 10, typiclust 20)",
        SCORING,
        ge=1,
        le=10_000,
    )
    density_beta: float = _f(
        1.0, "info-density: exponent of the density term", SCORING, ge=0, le=100
    )
    ivf_threshold: int = _f(
        200_000, "density: use an IVF index above this many samples", SCORING, ge=1,
        le=1_000_000_000,
    )
    combine: Literal["rank-mean", "rank-product"] = _f(
        "rank-mean", "how '+'-combined estimators merge: rank-mean or rank-product", SCORING
    )
    score_batch_size: int = _f(
        256, "batch size of scoring passes", SCORING, ge=1, le=BATCH_MAX
    )
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
    batchbald_samples: int = _f(
        10_000,
        "batchbald: sampled joint configurations once exact joint entropies no longer fit",
        SCORING,
        ge=100,
        le=10_000_000,
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
    lr: float = _f(
        3e-3, "peak learning rate (AdamW, cosine; see --restart)", MODEL, gt=0, le=10
    )
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
    weight_decay: float = _f(1e-4, "AdamW weight decay", MODEL, ge=0, le=10)
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
    focal_gamma: float = _f(2.0, "focal losses: gamma", LOSSES, ge=0, le=100)
    cb_beta: float = _f(0.9999, "class-balanced losses: effective-number beta", LOSSES, ge=0, lt=1)
    ldam_max_margin: float = _f(0.5, "LDAM: largest margin", LOSSES, gt=0, le=100)
    ldam_scale: float = _f(30.0, "LDAM: logit scale", LOSSES, gt=0, le=1000)
    drw_start: float = _f(
        0.8, "LDAM-DRW: fraction of the epoch budget before re-weighting", LOSSES, ge=0, le=1
    )
    grw_exponent: float = _f(
        1.2, "GRW: exponent of the inverse-frequency weights", LOSSES, ge=0, le=10
    )
    decouple: Literal["none", "crt", "lws", "tau-norm"] = _f(
        "none",
        "second stage after the run (Kang et al. 2020): crt (classifier re-trained with "
        "class-balanced sampling on frozen features), lws (learnable weight scaling) or "
        "tau-norm (classifier weight normalisation)",
        LOSSES,
    )
    tau: float | None = _f(
        None, "tau-norm: normalisation power (default: chosen on validation)", LOSSES, ge=0,
        le=10,
    )
    decouple_epochs: int = _f(
        10, "crt: epochs of the second stage (lws is solved to convergence)", LOSSES, ge=1,
        le=EPOCHS_MAX,
    )
    # run
    seed: int = _f(0, "training seed", RUN, ge=0, le=SEED_MAX)
    device: str = _f(
        "auto", "auto, cpu, cuda or cuda:N (under torchrun: each rank takes LOCAL_RANK's GPU)",
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


def describe_error(exc: ValidationError, source: str) -> str:
    """The first validation problem as one line: key, what is wrong, what is accepted."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "config"
    flag = "--" + key.replace("_", "-")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' in {source}; accepted keys: {', '.join(FIELD_NAMES)}"
    value = err.get("input")
    accepted = field_range(key)
    tail = f"; accepted: {accepted}" if accepted else ""
    return f"invalid {flag} = {value!r} in {source}: {err['msg']}{tail}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Key/value pairs from TOML, YAML or JSON (a run's config.json: its `config` part)."""
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
        if kind == "toml":
            data = tomllib.loads(text)
        elif kind == "yaml":
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FlexsampleError(f"config file {p} is not valid {kind.upper()}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FlexsampleError(f"config file {p} must hold a mapping of keys to values")
    if "config" in data and "split_hash" in data:  # a run's config.json
        data = data["config"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def validate_config(values: dict[str, Any], source: str = "the command line") -> RunConfig:
    """RunConfig.model_validate with a bad value as one FlexsampleError line naming the flag.

    For callers that build configs themselves (a bench grid's swept values, a saved cell).
    """
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise FlexsampleError(describe_error(exc, source)) from None


def resolve_config(file: str | Path | None, flags: dict[str, Any]) -> RunConfig:
    """defaults < file < flags (flags given as None are ignored)."""
    values: dict[str, Any] = {}
    source = "the command line"
    if file is not None:
        values.update(read_config_file(file))
        source = f"config file {file}"
        try:
            RunConfig.model_validate(values)
        except ValidationError as exc:
            raise FlexsampleError(describe_error(exc, source)) from None
    given = {k: v for k, v in flags.items() if v is not None and v != []}
    values.update(given)
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        err_key = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        where = "the command line" if err_key in given else source
        raise FlexsampleError(describe_error(exc, where)) from None
