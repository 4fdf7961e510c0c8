"""Registries: decorator registration, lookups, option filtering, entry points, plugins."""

from __future__ import annotations

import sys
import types

import pytest

from flexsample.engine import FlexsampleError, Registry, UnknownNameError, import_plugin
from flexsample.engine.registries import ESTIMATORS, get_estimator, list_estimators
from flexsample.engine.registry import accepted_kwargs


def test_register_get_create_and_names():
    reg: Registry = Registry("widget", "flexsample.test-widgets")

    @reg.register("spinner")
    class Spinner:
        """Spins. Second line is not shown."""

        def __init__(self, speed: int = 1):
            self.speed = speed

    assert reg.names() == ["spinner"]
    assert reg.get("spinner") is Spinner and Spinner.name == "spinner"
    assert reg.create("spinner", speed=3, unrelated=True).speed == 3
    assert reg.describe() == [("spinner", "Spins. Second line is not shown.", __name__)]
    with pytest.raises(UnknownNameError, match="unknown widget 'wheel'; available: spinner"):
        reg.get("wheel")


def test_duplicate_names_from_different_code_are_refused():
    reg: Registry = Registry("widget", "flexsample.test-widgets")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_accepted_kwargs_filters_by_signature():
    def f(a, b=1):
        return a, b

    def g(a, **kw):
        return a, kw

    assert accepted_kwargs(f, {"a": 1, "c": 2}) == {"a": 1}
    assert accepted_kwargs(g, {"a": 1, "c": 2}) == {"a": 1, "c": 2}


def test_builtins_are_registered():
    assert {"mcdropout", "entropy", "random"} <= set(list_estimators())
    est = get_estimator("mcdropout", mc_samples=7, unrelated_option="x")
    assert est.mc_samples == 7


def test_entry_points_are_loaded(monkeypatch):
    module = types.ModuleType("fake_plugin_mod")

    def load_plugin():
        @ESTIMATORS.register("ep-scorer")
        class EP:
            """From an entry point."""

        return EP

    class FakeEP:
        name, value = "ep-scorer", "fake_plugin_mod:EP"
        load = staticmethod(load_plugin)

    reg: Registry = Registry("estimator", "flexsample.estimators")
    calls = []

    def fake_entry_points(group):
        calls.append(group)
        return [FakeEP()]

    monkeypatch.setattr("flexsample.engine.registry.entry_points", fake_entry_points)
    monkeypatch.setitem(sys.modules, "fake_plugin_mod", module)
    reg.names()
    assert calls == ["flexsample.estimators"]
    assert "ep-scorer" in ESTIMATORS._items
    ESTIMATORS._items.pop("ep-scorer")


def test_broken_entry_point_names_itself(monkeypatch):
    class BadEP:
        name, value = "bad", "nowhere:thing"

        @staticmethod
        def load():
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr("flexsample.engine.registry.entry_points", lambda group: [BadEP()])
    reg: Registry = Registry("estimator", "flexsample.estimators")
    with pytest.raises(FlexsampleError, match="entry point 'bad' .*failed to load"):
        reg.names()


def test_import_plugin_errors():
    with pytest.raises(FlexsampleError, match="cannot import plugin module 'no_such_mod_q'"):
        import_plugin("no_such_mod_q")
