"""Registries: decorator registration, lookups, declared options, entry points, plugins."""

from __future__ import annotations

import sys
import types

import pytest

from flexsample.engine import FlexsampleError, Registry, UnknownNameError, import_plugin
from flexsample.engine.options import OptionError
from flexsample.engine.registries import ESTIMATORS, get_estimator, list_estimators


def test_register_get_create_and_names():
    reg: Registry = Registry("widget", "flexsample.test-widgets")

    @reg.register("spinner")
    class Spinner:
        """Spins. Second line is not shown."""

        def __init__(self, speed: int = 1):
            self.speed = speed

    assert reg.names() == ["spinner"]
    assert reg.get("spinner") is Spinner and Spinner.name == "spinner"
    assert reg.create("spinner", speed=3).speed == 3
    with pytest.raises(
        OptionError, match="widget 'spinner' has no option 'unrelated'; its options: speed"
    ):
        reg.create("spinner", speed=3, unrelated=True)
    assert reg.describe() == [("spinner", "Spins. Second line is not shown.", __name__)]
    with pytest.raises(UnknownNameError, match="unknown widget 'wheel'; available: spinner"):
        reg.get("wheel")


def test_duplicate_names_from_different_code_are_refused():
    reg: Registry = Registry("widget", "flexsample.test-widgets")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_options_come_from_the_signature_typed_and_checked():
    reg: Registry = Registry("widget", "flexsample.test-widgets", runtime=("counts",))

    @reg.register("gear")
    class Gear:
        def __init__(self, counts, teeth: int = 12, ratio: float = 1.5, *args, **kw):
            self.counts, self.teeth, self.ratio = counts, teeth, ratio

    assert list(reg.options("gear").model_fields) == ["teeth", "ratio"]  # no runtime, *, **
    gear = reg.build("gear", {"teeth": "7"}, counts=[1, 2])
    assert (gear.teeth, gear.ratio, gear.counts) == (7, 1.5, [1, 2])
    with pytest.raises(
        OptionError, match=r"invalid widget 'gear' option 'teeth' = 'x'.*an integer"
    ):
        reg.build("gear", {"teeth": "x"}, counts=[])
    with pytest.raises(OptionError, match=r"no option 'teth' \(did you mean 'teeth'\?\)"):
        reg.build("gear", {"teth": 3}, counts=[])


def test_builtins_are_registered():
    assert {"mcdropout", "entropy", "random"} <= set(list_estimators())
    est = get_estimator("mcdropout", mc_samples=7)
    assert est.mc_samples == 7
    with pytest.raises(OptionError, match="estimator 'mcdropout' has no option 'unrelated_option'"):
        get_estimator("mcdropout", unrelated_option="x")
    both = get_estimator("mcdropout+density", knn=3, mc_samples=4)  # the CLI's '+' specs too
    assert [p.name for p in both.parts] == ["mcdropout", "density"] and both.parts[1].knn == 3


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
