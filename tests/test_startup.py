"""Start-up: the CLI's light commands never import torch, and `list` still shows everything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flexsample.cli import catalogue

HEAVY = ("torch", "torchvision", "timm", "faiss", "sklearn", "ray", "mlflow", "wandb")

# runs the console script's entry point in-process, then reports which heavy modules loaded
PROBE = """
import sys
sys.argv = ["flexsample", *sys.argv[1:]]
from flexsample.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
"""


def probe(*args: str) -> tuple[list[str], str]:
    """(output lines before the report, the report line) of `flexsample ARGS`."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("EXIT"), proc.stdout + proc.stderr
    return lines[:-1], lines[-1]


def test_importing_the_app_does_not_import_torch():
    code = (
        f"import sys, flexsample.cli.app\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"]])
def test_light_commands_do_not_import_torch(args):
    lines, report = probe(*args)
    assert report == "EXIT 0 HEAVY -"
    assert lines


def test_list_shows_every_builtin_without_torch():
    lines, report = probe("list")
    assert report == "EXIT 0 HEAVY -"
    listed = [ln.split()[:2] for ln in lines]
    rows = catalogue.BUILTINS + catalogue.CHOICES
    assert listed == [[kind, name] for kind, name, _ in rows]
    for (_, _, doc), line in zip(rows, lines, strict=True):
        assert line.endswith(doc) and "[plugin:" not in line


def test_the_listed_choices_are_the_configs_accepted_values():
    from typing import get_args

    from flexsample.workflows.config import RunConfig

    for kind in ("acquisition", "mc-source", "decouple"):
        field = RunConfig.model_fields[kind.replace("-", "_")]
        accepted = [v for v in get_args(field.annotation) if v != "none"]
        assert [name for k, name, _ in catalogue.CHOICES if k == kind] == accepted


def test_the_catalogue_matches_the_registries():
    """The table `list` prints without torch is what the registries hold (regenerate it with
    `python -m flexsample.cli.catalogue` when this fails)."""
    regs = catalogue.registries()
    assert [reg.group for reg in regs] == list(catalogue.GROUPS)
    builtin = [
        (reg.kind, name, doc)
        for reg in regs
        for name, doc, _origin in reg.describe()
        if reg.is_builtin(name)
    ]
    assert list(catalogue.BUILTINS) == builtin


def test_list_prints_the_same_from_the_catalogue_and_the_registries(cli, monkeypatch):
    full = cli("list")  # in this process the built-ins are imported: the registries answer
    assert full.exit_code == 0, full.output
    monkeypatch.setattr(catalogue, "needs_registries", lambda: False)
    fast = cli("list")
    assert fast.exit_code == 0, fast.output
    # other tests' plugins may be registered in this process: drop them, and compare words (a
    # longer plugin name widens the registries' name column)
    plugin_free = [ln.split() for ln in full.stdout.splitlines() if "[plugin:" not in ln]
    assert [ln.split() for ln in fast.stdout.splitlines()] == plugin_free


def test_an_entry_point_or_imported_builtins_make_the_registries_answer(monkeypatch):
    from flexsample.engine import registry as registry_mod

    for module in catalogue.REGISTERING:
        monkeypatch.delitem(sys.modules, module, raising=False)
    asked = []

    def entry_points(group):
        asked.append(group)
        return ["an entry point"] if group == "flexsample.losses" else []

    monkeypatch.setattr(registry_mod, "entry_points", entry_points)
    assert catalogue.needs_registries()
    assert "flexsample.losses" in asked
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [])
    assert not catalogue.needs_registries()
    monkeypatch.setitem(sys.modules, "flexsample.training.losses", object())
    assert catalogue.needs_registries()
