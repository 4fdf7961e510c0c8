"""The run configuration: one pydantic model, loadable from TOML, YAML or a run's config.json.

Precedence: defaults < config file < flags given on the command line. Unknown keys and
out-of-range values are rejected with one line naming the key and what is accepted.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flexsample.engine.errors import FlexsampleError


class RunConfig(BaseModel):
    """Everything that determines a run's result (the output folder is not part of it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    dataset: str = Field("digits-lt", description="dataset name (see `flexsample list`)")
    data_dir: str | None = Field(None, description="folder holding the dataset's images")
    splits_dir: str | None = Field(None, description="folder holding split manifests")
    imbalance_ratio: float = Field(100.0, ge=1, description="imbalance ratio r (n_max / n_min)")
    data_seed: int = Field(0, ge=0, description="seed of the data split (not of training)")
    image_size: int | None = Field(None, ge=4, description="input resolution; dataset default")
    skip_missing: bool = Field(False, description="skip images listed but absent or unreadable")
    # curriculum
    estimator: str = Field("mcdropout", description="scoring estimator")
    policy: str = Field("linear", description="schedule: when and how much the subset grows")
    allocation: str = Field("proportional", description="how a step's budget splits by class")
    anchors: str = Field("random", description="anchor strategy: the starting subset")
    rounds: int = Field(5, ge=1, description="rounds; the epoch budget is rounds x epochs")
    epochs_per_round: int = Field(20, ge=1, description="epochs per round")
    mc_samples: int = Field(20, ge=2, description="MC-dropout draws T")
    mc_mode: Literal["head", "full"] = Field("head", description="MC-dropout mode")
    score_batch_size: int = Field(256, ge=1, description="batch size of scoring passes")
    # model and training
    backbone: str = Field("auto", description="small-cnn, a timm model name, or auto")
    pretrained: str | None = Field(None, description="local weights file for the backbone")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the classifier")
    batch_size: int = Field(64, ge=2, description="training batch size")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW, cosine per round)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    loss: str = Field("ce", description="training loss")
    sampler: str = Field("instance", description="epoch sampler")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0 = off)")
    logit_adjust: float = Field(0.0, ge=0, description="post-hoc logit adjustment tau")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, ge=0, description="training seed")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    plugin: list[str] = Field(default_factory=list, description="modules imported first")


FIELD_NAMES = tuple(RunConfig.model_fields)


def describe_error(exc: ValidationError, source: str) -> str:
    """The first validation problem as one line: key, what is wrong, what is accepted."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "config"
    flag = "--" + key.replace("_", "-")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' in {source}; accepted keys: {', '.join(FIELD_NAMES)}"
    value = err.get("input")
    return f"invalid {flag} = {value!r} in {source}: {err['msg']}"


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


def resolve_config(
    file: str | Path | None, flags: dict[str, Any]
) -> RunConfig:
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
