"""Name -> class registries with entry-point discovery (timm's register/create/list idiom),
and the registries of the engine's components (ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS,
TRACKERS, LAUNCHERS) with their `register_*` / `get_*` / `list_*` helpers.

Built-ins register themselves when their package is imported; the registry imports it lazily
on first lookup so that `engine` never imports `estimators` or `policies` at import time.
Third-party packages register through an entry-point group, or are imported with `--plugin`.

Every name remembers where it came from (its module, and the entry point or `--plugin` module
that loaded it) so that an error in a plugin can name the plugin and its origin in one line.

A renamed entry keeps its old name as a deprecated alias (`Registry.alias`): looking the old
name up gives the new entry and one FutureWarning; listings show only the new name, and no
plugin may take the old one.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import os
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import Field, create_model

from .errors import FlexsampleError, PluginError, RegistrationError, UnknownNameError
from .interfaces import Allocation, Anchors, Estimator, Policy
from .options import Options, closest, options_model, resolve_options

T = TypeVar("T")
# what a register decorator is given and returns unchanged: a component class or factory
C = TypeVar("C", bound=Callable[..., Any])


def is_builtin_module(module: str | None) -> bool:
    """True for code that ships with flexsample (a bug there is an internal error)."""
    return module is not None and (module == "flexsample" or module.startswith("flexsample."))


@dataclass(frozen=True)
class Source:
    """What was being loaded when a name registered: an entry point or a --plugin module."""

    plugin: str | None = None  # the --plugin module name
    ep_name: str | None = None
    ep_value: str | None = None
    ep_group: str | None = None

    def describe(self, module: str) -> str:
        if self.ep_name is not None:
            return f"entry point '{self.ep_name} = {self.ep_value}' in group {self.ep_group}"
        if self.plugin == module:
            return f"plugin module {module}"
        return f"module {module}, imported by --plugin {self.plugin}"


_loading_stack: list[Source] = []


@contextlib.contextmanager
def _loading(source: Source) -> Iterator[None]:
    """Names registered inside this block come from `source`."""
    _loading_stack.append(source)
    try:
        yield
    finally:
        _loading_stack.pop()


def _current_source() -> Source | None:
    return _loading_stack[-1] if _loading_stack else None


def origin_text(module: str, source: Source | None) -> str:
    """Where a registered name comes from, for messages."""
    if source is not None:
        return source.describe(module)
    if is_builtin_module(module):
        return f"built-in, module {module}"
    return f"module {module}"


def _who(module: str, source: Source | None) -> str:
    """The subject of a registration message: 'plugin module X', 'plugin entry point ...'."""
    if source is not None and source.ep_name is not None:
        return "plugin " + source.describe(module)
    return source.describe(module) if source is not None else f"module {module}"


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def passes_through(exc: BaseException) -> bool:
    """Failures of the machine, not of the plugin: out of memory, a full disk.

    They keep their type so the code that handles them (a retry with a smaller batch, the
    disk-full message) still sees them.
    """
    if isinstance(exc, MemoryError):
        return True
    if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def plugin_error(
    kind: str, name: str, origin: str, method: str, exc: BaseException
) -> BaseException:
    """The error to raise for `exc`, raised inside plugin `name`'s `method`.

    A FlexsampleError that already names the plugin (e.g. the scoring context refusing an
    undeclared read) and machine failures (`passes_through`) are returned unchanged; anything
    else becomes a one-line PluginError naming the kind, the name, its origin and the cause.
    """
    if passes_through(exc):
        return exc
    if isinstance(exc, FlexsampleError):
        if f"'{name}'" in str(exc):
            return exc
        return PluginError(f"{kind} '{name}' ({origin}): {_one_line(exc)}")
    return PluginError(
        f"{kind} '{name}' raised {type(exc).__name__}: {_one_line(exc)} in {method}() "
        f"({origin}); fix the plugin, or rerun with --debug for the traceback"
    )


_MANIFEST_MODELS: dict[tuple[str, str], type[Options]] = {}
_MANIFEST_TYPES = {
    "__builtins__": {},
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "None": None,
    "Literal": Literal,
    "Mapping": Mapping,
}


def manifest_model(kind: str, name: str, rows: Sequence[tuple[Any, ...]]) -> type[Options]:
    """The options model of a built-in rebuilt from its manifest rows (name, annotation
    source, default, limits, help): the same fields, types, bounds and help as the model its
    constructor declares (`python -m flexsample.cli.catalogue` checks that it is)."""
    key = (kind, name)
    if key not in _MANIFEST_MODELS:
        fields: dict[str, Any] = {}
        for option, source, default, limits, help_ in rows:
            annotation = eval(source, _MANIFEST_TYPES)  # our generated manifest, never input
            info = Field(description=help_ or None, **limits)
            fields[option] = (Annotated[annotation, info], default)
        model = create_model(f"{name}Options", __base__=Options, **fields)
        _MANIFEST_MODELS[key] = model
    return _MANIFEST_MODELS[key]


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one kind."""

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: str | None = None,
        runtime: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self.runtime = runtime  # constructor arguments the caller supplies, not options
        self._items: dict[str, Callable[..., T]] = {}
        self._origin: dict[str, str] = {}  # name -> defining module
        self._source: dict[str, Source | None] = {}  # name -> entry point / --plugin module
        self._aliases: dict[str, tuple[str, str]] = {}  # old name -> (new name, warning text)
        self._builtins_loaded = False
        self._loaded = False
        self._entry_points_seen: tuple[tuple[str, ...], bool] | None = None  # (sys.path, any)

    def register(self, name: str | None = None) -> Callable[[C], C]:
        """Decorator: `@ESTIMATORS.register("bald")`; the name defaults to the class's `name`.

        A plugin may not take a built-in name or one another plugin registered: that is a
        RegistrationError naming both. Built-ins are imported first, so the clash shows at the
        plugin's registration whatever the import order.
        """

        def deco(obj: C) -> C:
            key = name or getattr(obj, "name", None)
            module = getattr(obj, "__module__", None) or "?"
            source = _current_source()
            builtin = is_builtin_module(module)
            if not key or not isinstance(key, str):
                if builtin:
                    raise ValueError(f"{self.kind} {obj!r} needs a name")
                raise RegistrationError(
                    f"{_who(module, source)} registers a {self.kind} "
                    f"({getattr(obj, '__qualname__', obj)!r}) without a name; pass one to the "
                    "register decorator or set the class attribute `name`"
                )
            if not builtin:
                self._load_builtins()
            if key in self._aliases:
                self._refuse_alias(key, module, source, builtin)
            existing = self._items.get(key)
            if existing is not None and existing is not obj:
                same = (
                    getattr(existing, "__module__", None),
                    getattr(existing, "__qualname__", None),
                )
                if same != (module, getattr(obj, "__qualname__", None)):
                    self._refuse(key, module, source, builtin)
            if name is not None and isinstance(obj, type):
                obj.name = key  # type: ignore[attr-defined]  # a component's ClassVar `name`
            self._items[key] = obj
            self._origin[key] = module
            self._source[key] = source
            return obj

        return deco

    def _refuse(self, key: str, module: str, source: Source | None, builtin: bool) -> None:
        if builtin:  # two built-ins with one name: a bug in flexsample
            raise ValueError(f"{self.kind} '{key}' is already registered by {self._origin[key]}")
        if is_builtin_module(self._origin[key]):
            raise RegistrationError(
                f"{_who(module, source)} registers {self.kind} '{key}', which is a built-in "
                "name; choose another name"
            )
        raise RegistrationError(
            f"{_who(module, source)} registers {self.kind} '{key}', already registered by "
            f"{self.origin(key)}; choose another name"
        )

    def _refuse_alias(self, key: str, module: str, source: Source | None, builtin: bool) -> None:
        new = self._aliases[key][0]
        if builtin:
            raise ValueError(f"{self.kind} '{key}' is already a deprecated alias of '{new}'")
        if self.is_builtin(new):
            what = f"a built-in name (the deprecated alias of '{new}')"
        else:
            what = f"the deprecated alias of '{new}' ({self.origin(new)})"
        raise RegistrationError(
            f"{_who(module, source)} registers {self.kind} '{key}', which is {what}; "
            "choose another name"
        )

    def alias(self, old: str, new: str, message: str | None = None) -> None:
        """Keep `old` working as a deprecated name of the registered entry `new`.

        Looking `old` up (`get`, `create`) returns `new`'s entry and emits `message` once per
        lookup as a FutureWarning (shown to users by default, unlike DeprecationWarning).
        `old` is left out of `names()` and `describe()`, and no one may register it.
        """
        if new not in self._items:
            raise ValueError(f"cannot alias {self.kind} '{old}' to unregistered '{new}'")
        text = message or f"{self.kind} '{old}' is deprecated: it is now called '{new}'"
        if self._aliases.get(old, ("",))[0] == new:  # a module imported twice
            self._aliases[old] = (new, text)
            return
        if old in self._items or old in self._aliases:
            module = getattr(self._items[new], "__module__", None) or "?"
            if old in self._aliases:
                self._refuse_alias(old, module, _current_source(), is_builtin_module(module))
            self._refuse(old, module, _current_source(), is_builtin_module(module))
        self._aliases[old] = (new, text)

    def _manifest(self) -> dict[str, Any] | None:
        """The built-ins' names, aliases and options as data (`flexsample._manifest`), while
        they are all this registry can hold and none is imported yet (importing them imports
        torch); None once anything registered, or when an installed package adds to the group.
        """
        if self._loaded or self._builtins_loaded or self._items or not self._builtins:
            return None
        path = tuple(sys.path)
        if self._entry_points_seen is None or self._entry_points_seen[0] != path:
            self._entry_points_seen = (path, bool(entry_points(group=self.group)))
        if self._entry_points_seen[1]:
            return None
        from flexsample._manifest import MANIFEST

        return MANIFEST.get(self.group)

    def aliases(self) -> dict[str, str]:
        """Deprecated name -> the name it stands for."""
        manifest = self._manifest()
        if manifest is not None:
            return {old: new for old, (new, _) in sorted(manifest["aliases"].items())}
        self._load()
        return {old: new for old, (new, _) in sorted(self._aliases.items())}

    def resolve(self, name: str, *, warn: bool = True) -> str:
        """The registered name `name` stands for (itself unless it is a deprecated alias);
        an alias warns (FutureWarning) unless `warn` is False."""
        manifest = self._manifest()
        if manifest is not None:
            aliases = manifest["aliases"]
        else:
            self._load()
            aliases = self._aliases
        if name not in aliases:
            return name
        new, text = aliases[name]
        if warn:
            warnings.warn(text, FutureWarning, stacklevel=3)
        return new

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        if self._builtins:
            importlib.import_module(self._builtins)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._load_builtins()
        for ep in entry_points(group=self.group):
            with _loading(Source(ep_name=ep.name, ep_value=ep.value, ep_group=self.group)):
                try:
                    ep.load()
                except FlexsampleError:  # already one line naming the plugin
                    raise
                except Exception as exc:  # a broken plugin must not hide the built-ins
                    raise PluginError(
                        f"plugin entry point '{ep.name}' ({ep.value}) in group {self.group} "
                        f"failed to load: {type(exc).__name__}: {_one_line(exc)}"
                    ) from exc

    def names(self) -> list[str]:
        """The registered names, sorted; deprecated aliases are not among them (`aliases`)."""
        manifest = self._manifest()
        if manifest is not None:
            return sorted(manifest["options"])
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        """The entry registered as `name` (a deprecated alias warns and gives its target)."""
        return self._get(self.resolve(name))

    def _get(self, name: str) -> Callable[..., T]:
        self._load()
        if name not in self._items:
            self._unknown(name)
        return self._items[name]

    def _unknown(self, name: str) -> typing.NoReturn:
        names = self.names()
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'{closest(name, names)}; available: {', '.join(names)}"
        )

    def options(self, name: str) -> type[Options]:
        """The options model of `name` (its declared options, validated: `engine.options`)."""
        name = self.resolve(name, warn=False)
        manifest = self._manifest()
        if manifest is not None:
            if name not in manifest["options"]:
                self._unknown(name)
            return manifest_model(self.kind, name, manifest["options"][name])
        return options_model(self._get(name), self.runtime)

    def resolve_options(self, name: str, values: Mapping[str, Any]) -> Options:
        """`values` checked against `name`'s options: one OptionError line naming the option."""
        name = self.resolve(name, warn=False)
        return resolve_options(self.kind, name, self.options(name), values)

    def create(self, name: str, /, **options: Any) -> T:
        """Instantiate `name` with `options`, checked against the options it declares
        (an unknown option or a bad value is one OptionError line naming it)."""
        return self.build(name, options)

    def build(self, name: str, options: Mapping[str, Any] | Options, /, **runtime: Any) -> T:
        """Instantiate `name` with its validated `options` and the caller's `runtime`
        arguments (those named in the registry's `runtime`, such as a loss's class counts).

        A plugin's constructor that raises becomes a PluginError naming it.
        """
        name = self.resolve(name)
        factory = self._get(name)
        if not isinstance(options, Options):
            options = self.resolve_options(name, options)
        kwargs = {**options.model_dump(), **runtime}
        if self.is_builtin(name):
            return factory(**kwargs)
        try:
            return factory(**kwargs)
        except Exception as exc:
            err = plugin_error(self.kind, name, self.origin(name), "__init__", exc)
            if err is exc:
                raise
            raise err from exc

    def is_builtin(self, name: str) -> bool:
        """Whether `name` (or the entry a deprecated alias stands for) ships with flexsample."""
        name = self._aliases.get(name, (name,))[0]
        return is_builtin_module(self._origin.get(name))

    def origin(self, name: str) -> str:
        """Where `name` comes from: its entry point, its --plugin module or its module."""
        name = self._aliases.get(name, (name,))[0]
        return origin_text(self._origin.get(name, "?"), self._source.get(name))

    def key_of(self, obj: object) -> str | None:
        """The registered name of `obj` (an instance of a registered class, or the class)."""
        cls = obj if isinstance(obj, type) else type(obj)
        for key, item in self._items.items():
            if item is cls or item is obj:
                return key
        return None

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, first docstring line, defining module) for every entry."""
        rows = []
        self._load()  # the docstrings are the classes' own: import them
        for key in self.names():
            doc = inspect.getdoc(self._items[key]) or ""
            rows.append((key, doc.splitlines()[0] if doc else "", self._origin[key]))
        return rows

    def __contains__(self, name: str) -> bool:
        """Whether `name` can be looked up (deprecated aliases included)."""
        manifest = self._manifest()
        if manifest is not None:
            return name in manifest["options"] or name in manifest["aliases"]
        self._load()
        return name in self._items or name in self._aliases


def _cwd_on_path() -> bool:
    cwd = os.path.realpath(os.getcwd())
    return any(os.path.realpath(p or os.curdir) == cwd for p in sys.path)


def _plugin_is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """The module itself (or its package) was not found, not one of its own imports."""
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def import_plugin(module: str) -> None:
    """Import a user module so that its decorators register what it defines.

    `module` is a module name (`my_module`, `my_pkg.scorers`). It is looked up on sys.path,
    then in the current folder: the installed `flexsample` script, unlike `python -m`, does not
    put the current folder on sys.path, yet `--plugin my_module` for a my_module.py in the
    folder the command runs from is the README's own example. When the current folder is
    needed it is appended to sys.path (installed packages keep precedence) and stays there, so
    the plugin's imports of its sibling files work. Names the module registers remember it as
    their origin, for error messages.
    """
    if module.endswith(".py") or "/" in module or os.sep in module:
        stem = os.path.splitext(os.path.basename(module))[0]
        raise FlexsampleError(
            f"--plugin '{module}' looks like a file path; give a module name instead "
            f"(--plugin {stem} for {stem}.py in the current folder, or a dotted name such as "
            "my_pkg.scorers)"
        )
    with _loading(Source(plugin=module)):
        try:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if not _plugin_is_missing(exc, module) or _cwd_on_path():
                    raise
                sys.path.append(os.getcwd())
                importlib.invalidate_caches()
                importlib.import_module(module)
        except FlexsampleError:
            raise
        except ModuleNotFoundError as exc:
            if not _plugin_is_missing(exc, module):
                raise PluginError(
                    f"cannot import plugin module '{module}': ModuleNotFoundError: "
                    f"{_one_line(exc)} (the plugin imports it: install it)"
                ) from exc
            raise PluginError(
                f"cannot import plugin module '{module}': ModuleNotFoundError: "
                f"{_one_line(exc)} (looked on sys.path and in the current folder "
                f"{os.getcwd()}; give an importable module name such as my_pkg.scorers, or run "
                f"from the folder holding {module.split('.')[0]}.py)"
            ) from exc
        except Exception as exc:
            raise PluginError(
                f"cannot import plugin module '{module}': {type(exc).__name__}: "
                f"{_one_line(exc)} (give an importable module name, e.g. my_pkg.scorers)"
            ) from exc


# --- the component registries and their timm-style helpers ----------------------------------

ESTIMATORS: Registry[Estimator] = Registry(
    "estimator", "flexsample.estimators", builtins="flexsample.estimators"
)
POLICIES: Registry[Policy] = Registry(
    "policy", "flexsample.policies", builtins="flexsample.policies"
)
ALLOCATIONS: Registry[Allocation] = Registry(
    "allocation", "flexsample.allocations", builtins="flexsample.policies"
)
ANCHORS: Registry[Anchors] = Registry(
    "anchors", "flexsample.anchors", builtins="flexsample.policies"
)

# Where a run's metrics go (TensorBoard, MLflow, W&B, CSV: `flexsample.integrations.trackers`)
# and where bench cells run (local, Ray, Slurm: `flexsample.workflows.launchers`). Both are
# open like the others: a package adds one through its entry-point group.
TRACKERS: Registry[Any] = Registry(
    "tracker",
    "flexsample.trackers",
    builtins="flexsample.integrations.trackers",
    runtime=("run_dir", "log_dir", "config", "run_name", "group"),
)
LAUNCHERS: Registry[Any] = Registry(
    "launcher",
    "flexsample.launchers",
    builtins="flexsample.workflows.launchers",
    runtime=("out", "device", "gpus", "cores"),
)

# What a run trains on and with: datasets (`flexsample.datasets.builtin`), losses and samplers
# (`flexsample.training`). Declared here, with the others, so a configuration is checked
# against every kind without importing torch (the built-ins are imported on first use).
DATASETS: Registry[Any] = Registry(
    "dataset",
    "flexsample.datasets",
    builtins="flexsample.datasets.builtin",
    runtime=("progress", "cache_dir"),
)
LOSSES: Registry[Any] = Registry(
    "loss", "flexsample.losses", builtins="flexsample.training.losses", runtime=("class_counts",)
)
SAMPLERS: Registry[Any] = Registry(
    "sampler",
    "flexsample.samplers",
    builtins="flexsample.training.samplers",
    runtime=("labels", "rng"),
)

# the four plugin kinds, by the `kind` word their messages use
PLUGIN_REGISTRIES: dict[str, Registry[Any]] = {
    reg.kind: reg for reg in (ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS)
}


def register_estimator(name: str | None = None) -> Callable[[C], C]:
    return ESTIMATORS.register(name)


def get_estimator(spec: str, /, **options: Any) -> Estimator:
    """The estimator `spec` names: one registered name, or several joined by '+' (ranked and
    merged as `--estimator mcdropout+density` is), with its options checked."""
    from .combine import build_estimator

    return build_estimator(spec, options)


def list_estimators() -> list[str]:
    """Registered estimator names; deprecated aliases are left out (`ESTIMATORS.aliases()`)."""
    return ESTIMATORS.names()


def register_policy(name: str | None = None) -> Callable[[C], C]:
    return POLICIES.register(name)


def get_policy(name: str, /, **options: Any) -> Policy:
    return POLICIES.create(name, **options)


def list_policies() -> list[str]:
    return POLICIES.names()


def register_allocation(name: str | None = None) -> Callable[[C], C]:
    return ALLOCATIONS.register(name)


def get_allocation(name: str, /, **options: Any) -> Allocation:
    return ALLOCATIONS.create(name, **options)


def list_allocations() -> list[str]:
    return ALLOCATIONS.names()


def register_anchors(name: str | None = None) -> Callable[[C], C]:
    return ANCHORS.register(name)


def get_anchors(name: str, /, **options: Any) -> Anchors:
    return ANCHORS.create(name, **options)


def list_anchors() -> list[str]:
    return ANCHORS.names()
