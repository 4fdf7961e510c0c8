"""A plugin package installed with pip: seen by `flexsample list` and usable by `run`.

Real processes and a real `pip install`: entry points are read from installed metadata. The
package goes to a folder of its own (`pip install --target`), put on the PYTHONPATH of the
processes that should see it: installed into the shared environment it was seen, for the
module's duration, by every test running beside it (one in another pytest-xdist worker found
an entry point and imported the built-ins, and with them torch, where it checks that torch is
not imported).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, TINY

PLUGIN = REPO / "examples" / "plugin_package"


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The folder the plugin package is installed in (its dist-info, entry points included)."""
    site = tmp_path_factory.mktemp("plugin-site")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    res = pip("install", "--no-deps", "-q", "--target", str(site), *isolation, str(PLUGIN))
    assert res.returncode == 0, res.stderr
    assert list(site.glob("flexsample_example_plugin-*.dist-info"))
    return site


def flexsample(*args: str, site=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "flexsample", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_installed_plugin_is_listed_and_runs(installed_plugin, tmp_path):
    unseen = flexsample("list")  # not installed where this process looks
    assert unseen.returncode == 0 and "loss-proxy" not in unseen.stdout, unseen.stderr
    listed = flexsample("list", site=installed_plugin)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    line = next(ln for ln in lines if ln.split()[:2] == ["estimator", "loss-proxy"])
    assert "plugin: flexsample_example_plugin.scorers" in line
    out = tmp_path / "run"
    res = flexsample("run", *TINY, "--estimator", "loss-proxy", "--out", out, site=installed_plugin)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["config"]["estimator"] == "loss-proxy"
    assert len(json.loads((out / "results.json").read_text())["test"]["per_class_recall"]) == 10


PLUGIN_MODULE = '''
from flexsample import Estimator, register_estimator


@register_estimator("first-come")
class FirstCome(Estimator):
    """Lower index first (a toy)."""

    def score(self, ctx, candidates):
        return -candidates.astype(float)
'''


def test_plugin_module_by_flag(cli, tmp_path, monkeypatch):
    """`--plugin module` registers what an importable (not installed) module defines."""
    import numpy as np

    (tmp_path / "my_scorers_q.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = cli("list", "--plugin", "my_scorers_q")
    assert res.exit_code == 0, res.output
    assert any(ln.split()[:2] == ["estimator", "first-come"] for ln in res.stdout.splitlines())
    out = tmp_path / "run"
    res = cli("run", *TINY, "--plugin", "my_scorers_q", "--estimator", "first-come", "--out", out)
    assert res.exit_code == 0, res.output
    assert len(np.load(out / "selection.npz")["index"]) > 0
