"""Name -> class registries with entry-point discovery (timm's register/create/list idiom).

Built-ins register themselves when their package is imported; the registry imports it lazily
on first lookup so that `engine` never imports `estimators` or `policies` at import time.
Third-party packages register through an entry-point group, or are imported with `--plugin`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import FlexsampleError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one kind."""

    def __init__(self, kind: str, group: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._items: dict[str, Callable[..., T]] = {}
        self._origin: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: `@ESTIMATORS.register("bald")`; the name defaults to the class's `name`."""

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            key = name or getattr(obj, "name", None)
            if not key or not isinstance(key, str):
                raise ValueError(f"{self.kind} {obj!r} needs a name")
            existing = self._items.get(key)
            if existing is not None and existing is not obj:
                same = (
                    getattr(existing, "__module__", None),
                    getattr(existing, "__qualname__", None),
                )
                if same != (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)):
                    raise ValueError(
                        f"{self.kind} '{key}' is already registered by {existing.__module__}"
                    )
            if name is not None and isinstance(obj, type):
                obj.name = key  # type: ignore[attr-defined]
            self._items[key] = obj
            self._origin[key] = getattr(obj, "__module__", "?")
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtins:
            importlib.import_module(self._builtins)
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-ins
                raise FlexsampleError(
                    f"plugin entry point '{ep.name}' ({ep.value}) in group {self.group} "
                    f"failed to load: {type(exc).__name__}: {exc}"
                ) from exc

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **options: Any) -> T:
        """Instantiate `name`, passing only the options its constructor accepts."""
        factory = self.get(name)
        return factory(**accepted_kwargs(factory, options))

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, first docstring line, defining module) for every entry."""
        rows = []
        for key in self.names():
            doc = inspect.getdoc(self._items[key]) or ""
            rows.append((key, doc.splitlines()[0] if doc else "", self._origin[key]))
        return rows

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


def accepted_kwargs(factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The subset of `options` that `factory` takes (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


def import_plugin(module: str) -> None:
    """Import a user module so that its decorators register what it defines."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise FlexsampleError(
            f"cannot import plugin module '{module}': {type(exc).__name__}: {exc} "
            "(give an importable module name, e.g. my_pkg.scorers)"
        ) from exc
