"""Component options: every registered component declares the options it takes.

A component (estimator, policy, allocation, anchors, loss, sampler, dataset, tracker,
launcher) declares its options once, where it is defined, in one of two ways:

* keyword parameters of its constructor (or factory function), typed, with a default and,
  where a range or help text is wanted, `Annotated[type, opt("help", ge=..., le=...)]`::

      def __init__(self, power: Annotated[float, opt("exponent of the margin", gt=0)] = 2.0):

  A plugin that writes plain `power: float = 2.0` gets a typed option too;
* or a nested pydantic model named `Options` (a subclass of `Options`), when the constructor
  takes something else.

`options_model(factory)` turns either into a pydantic model that refuses unknown keys, and
`resolve_options` validates a mapping against it: an unknown key or a bad value is one
`OptionError` line naming the component, the option, and what is accepted. Run-time
arguments that are not options (a loss's `class_counts`, a dataset's progress display) are
left out by name (`runtime`).

The engine knows nothing of flags: errors name the option ("estimator 'mcdropout' option
'mc_samples'"); the CLI says which flag sets it.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from .errors import FlexsampleError


class OptionError(FlexsampleError, ValueError):
    """An option a component does not take, or a value outside what it accepts.

    `kind` and `component` name the component, `option` the option (None: the options as a
    whole); the CLI uses them to name the flag that set it.
    """

    def __init__(
        self, message: str, *, kind: str = "", component: str = "", option: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.component = component
        self.option = option


class Options(BaseModel):
    """Base of every component's options: typed, bounded, finite, no unknown keys."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


def opt(help: str, *, path: str | None = None, **limits: Any) -> Any:
    """Help text and bounds of one option, for `Annotated[type, opt(...)]` (no default here:
    the parameter's default is the option's default). `path="folder"` or `"file"` declares an
    option that names something on disk: a run checks it exists before building anything."""
    if path is not None:
        if path not in PATH_KINDS:
            raise ValueError(f"opt(path=...) must be one of {PATH_KINDS}, not {path!r}")
        limits["json_schema_extra"] = {"path": path}
    return Field(description=help, **limits)


PATH_KINDS = ("folder", "file")


def path_kind(info: FieldInfo) -> str | None:
    """'folder' or 'file' for an option declared with `opt(..., path=...)`, else None."""
    extra = info.json_schema_extra
    return extra.get("path") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def range_text(limits: Mapping[str, Any]) -> str:
    """'1 <= x <= 100000' from a field's ge/gt/le/lt."""
    low = [f"{_num(limits[k])} {op}" for k, op in (("ge", "<="), ("gt", "<")) if k in limits]
    high = [f"{op} {_num(limits[k])}" for k, op in (("le", "<="), ("lt", "<")) if k in limits]
    return " ".join([*low, "x", *high]) if low or high else ""


def field_limits(info: FieldInfo) -> dict[str, Any]:
    """ge/gt/le/lt of a pydantic field (from its metadata)."""
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(meta, key, None)
            if value is not None:
                out[key] = value
    return out


_MODELS: dict[Any, type[Options]] = {}


def _signature_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]


def options_model(factory: Callable[..., Any], runtime: Iterable[str] = ()) -> type[Options]:
    """The options model of a component: its nested `Options` class, else one made from its
    constructor's keyword parameters (minus `runtime` ones, *args and **kwargs)."""
    key = (factory, tuple(sorted(runtime)))
    if key in _MODELS:
        return _MODELS[key]
    declared = getattr(factory, "Options", None)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        model: type[Options] = declared  # type: ignore[assignment]
    else:
        model = _model_from_signature(factory, set(runtime))
    _MODELS[key] = model
    return model


def _model_from_signature(factory: Callable[..., Any], runtime: set[str]) -> type[Options]:
    target = _signature_target(factory)
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations in a plugin: take them as Any
        hints = {}
    if isinstance(factory, type) and params and params[0].name == "self":
        params = params[1:]
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or p.name in runtime:
            continue
        if p.name.startswith("_"):
            continue
        ann = hints.get(p.name, Any)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (ann, default)
    name = getattr(factory, "__name__", "Component") + "Options"
    return create_model(name, __base__=Options, **fields)


def option_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def closest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest of `choices`, or ''."""
    near = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    if not near:
        return ""
    return " (did you mean " + " or ".join(f"'{n}'" for n in near) + "?)"


def describe_option(info: FieldInfo) -> str:
    """'an integer, 2 <= x <= 10000' / 'one of: bald, entropy': what a field accepts."""
    ann = info.annotation
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(ann))
    args = [a for a in typing.get_args(ann) if a is not type(None)] if origin else [ann]
    base = args[0] if len(args) == 1 else ann
    noun: dict[object, str] = {
        int: "an integer",
        float: "a finite number",
        bool: "true or false",
        str: "a string",
    }
    text = noun.get(base, "")
    limits = range_text(field_limits(info))
    return ", ".join(t for t in (text, limits) if t)


def resolve_options(
    kind: str, name: str, model: type[Options], values: Mapping[str, Any]
) -> Options:
    """`values` validated against `model`; one OptionError line for the first problem."""
    fields = model.model_fields
    for key in values:
        if key not in fields:
            takes = ", ".join(fields) if fields else "none"
            raise OptionError(
                f"{kind} '{name}' has no option '{key}'{closest(key, fields)}; its options: "
                f"{takes}",
                kind=kind,
                component=name,
                option=key,
            )
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        bad = str(err["loc"][0]) if err["loc"] else None
        if bad is None or bad not in fields:
            raise OptionError(
                f"{kind} '{name}' options: {err['msg']}", kind=kind, component=name
            ) from None
        if err["type"] == "missing":
            raise OptionError(
                f"{kind} '{name}' needs option '{bad}' ({describe_option(fields[bad])})",
                kind=kind,
                component=name,
                option=bad,
            ) from None
        accepted = describe_option(fields[bad])
        tail = f"; accepted: {accepted}" if accepted else ""
        raise OptionError(
            f"invalid {kind} '{name}' option '{bad}' = {err.get('input')!r}: {err['msg']}{tail}",
            kind=kind,
            component=name,
            option=bad,
        ) from None


def option_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(option, default, accepted, help) for each option: what `flexsample list NAME` shows."""
    rows = []
    for key, info in model.model_fields.items():
        required = info.is_required()
        default = "required" if required else repr(info.get_default(call_default_factory=True))
        rows.append((key, default, describe_option(info), info.description or ""))
    return rows
