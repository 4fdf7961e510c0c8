"""Plugins fail in one line naming the plugin: exceptions, bad outputs, taken names, --plugin.

Each plugin is a module written to a temporary folder and loaded with `--plugin`, through the
CLI (in-process), or through a subprocess for what depends on the process: the current folder
on sys.path and entry points discovered from installed distributions.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from flexsample.engine import registry as registry_mod
from flexsample.engine.errors import FlexsampleError, PluginError, RegistrationError
from flexsample.engine.registries import PLUGIN_REGISTRIES, get_policy
from flexsample.engine.registry import import_plugin
from flexsample.engine.validation import (
    check_anchors,
    check_budget,
    check_should_query,
    plugin_call,
    select_anchors,
)

from .conftest import TINY, one_error_line

HEADER = """\
import numpy as np
from flexsample import (
    Allocation, Anchors, Estimator, Policy,
    register_allocation, register_anchors, register_estimator, register_policy,
)
"""
_ids = itertools.count()


@pytest.fixture
def restore_registries():
    """Names registered by a test's plugins are removed afterwards."""
    for reg in PLUGIN_REGISTRIES.values():
        reg.names()  # built-ins and entry points loaded before the snapshot
    saved = {
        kind: (dict(r._items), dict(r._origin), dict(r._source))
        for kind, r in PLUGIN_REGISTRIES.items()
    }
    yield
    for kind, (items, origin, source) in saved.items():
        reg = PLUGIN_REGISTRIES[kind]
        reg._items, reg._origin, reg._source = items, origin, source


@pytest.fixture
def write_plugin(tmp_path, monkeypatch, restore_registries):
    """write_plugin(body) -> the name of an importable module holding HEADER + body."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(body: str, header: str = HEADER) -> str:
        name = f"fs_plugin_{os.getpid()}_{next(_ids)}"
        (tmp_path / f"{name}.py").write_text(header + textwrap.dedent(body))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def run_plugin(cli, tmp_path: Path, module: str, *args: str):
    return cli("run", *TINY, "--out", tmp_path / "run", "--plugin", module, *args)


# -- 1. exceptions inside a plugin ----------------------------------------------------------

RAISING = {
    "estimator-score": (
        """
        @register_estimator("{name}")
        class Boom(Estimator):
            def score(self, ctx, candidates):
                raise ValueError("kaboom")
        """,
        ["--estimator", "{name}"],
        "estimator '{name}' raised ValueError: kaboom in score()",
    ),
    "estimator-constructor": (
        """
        @register_estimator("{name}")
        class Boom(Estimator):
            def __init__(self, mc_samples=1):
                raise ValueError("needs a GPU")
        """,
        ["--estimator", "{name}"],
        "estimator '{name}' raised ValueError: needs a GPU in __init__()",
    ),
    "combined-estimator-score": (
        """
        @register_estimator("{name}")
        class Boom(Estimator):
            def score(self, ctx, candidates):
                raise ValueError("kaboom")
        """,
        ["--estimator", "entropy+{name}"],
        "estimator '{name}' raised ValueError: kaboom in score()",
    ),
    "policy-should-query": (
        """
        @register_policy("{name}")
        class Boom(Policy):
            def should_query(self, state):
                raise KeyError("no such thing")
            def budget(self, state):
                return 1
        """,
        ["--policy", "{name}"],
        "policy '{name}' raised KeyError: 'no such thing' in should_query()",
    ),
    "policy-budget": (
        """
        @register_policy("{name}")
        class Boom(Policy):
            def should_query(self, state):
                return True
            def budget(self, state):
                return 1 // 0
        """,
        ["--policy", "{name}"],
        "policy '{name}' raised ZeroDivisionError: integer division or modulo by zero in budget()",
    ),
    "policy-constructor": (
        """
        @register_policy("{name}")
        class Boom(Policy):
            def __init__(self, rounds=1):
                raise RuntimeError("cannot start")
        """,
        ["--policy", "{name}"],
        "policy '{name}' raised RuntimeError: cannot start in __init__()",
    ),
    "policy-validate": (
        """
        @register_policy("{name}")
        class Boom(Policy):
            def validate(self, rounds, epochs_per_round):
                raise AttributeError("no attribute 'rounds'")
        """,
        ["--policy", "{name}"],
        "policy '{name}' raised AttributeError: no attribute 'rounds' in validate()",
    ),
    "policy-state-dict": (
        """
        from flexsample.engine.registries import get_policy

        @register_policy("{name}")
        class Boom(type(get_policy("linear"))):
            def state_dict(self):
                raise RuntimeError("no state")
        """,
        ["--policy", "{name}"],
        "policy '{name}' raised RuntimeError: no state in state_dict()",
    ),
    "allocation-quotas": (
        """
        @register_allocation("{name}")
        class Boom(Allocation):
            def quotas(self, state, budget):
                raise IndexError("out of classes")
        """,
        ["--allocation", "{name}"],
        "allocation '{name}' raised IndexError: out of classes in quotas()",
    ),
    "anchors-select": (
        """
        @register_anchors("{name}")
        class Boom(Anchors):
            def select(self, labels, num_classes, seed, features=None):
                raise TypeError("bad seed")
        """,
        ["--anchors", "{name}"],
        "anchors '{name}' raised TypeError: bad seed in select()",
    ),
}


@pytest.mark.parametrize("case", list(RAISING))
def test_an_exception_in_a_plugin_names_the_plugin(cli, tmp_path, write_plugin, case):
    body, args, expected = RAISING[case]
    name = f"pe-{case}"
    module = write_plugin(body.format(name=name))
    res = run_plugin(cli, tmp_path, module, *[a.format(name=name) for a in args])
    line = one_error_line(res)
    assert expected.format(name=name) in line, line
    assert f"(plugin module {module})" in line, line
    assert "internal error" not in line
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_flexsample_error_from_a_plugin_gets_its_name(cli, tmp_path, write_plugin):
    module = write_plugin(
        """
        from flexsample import FlexsampleError

        @register_policy("pe-picky")
        class Picky(Policy):
            def validate(self, rounds, epochs_per_round):
                raise FlexsampleError("needs --rounds >= 10")
        """
    )
    line = one_error_line(run_plugin(cli, tmp_path, module, "--policy", "pe-picky"))
    assert line == f"error: policy 'pe-picky' (plugin module {module}): needs --rounds >= 10"


def test_debug_shows_the_plugins_traceback(cli, tmp_path, write_plugin):
    body, args, _ = RAISING["estimator-score"]
    module = write_plugin(body.format(name="pe-debug"))
    res = run_plugin(cli, tmp_path, module, "--estimator", "pe-debug", "--debug")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and "kaboom" in res.stderr


def test_a_plugin_imported_by_the_plugin_module_says_so(cli, tmp_path, write_plugin):
    body, _, _ = RAISING["policy-budget"]
    inner = write_plugin(body.format(name="pe-inner"))
    outer = write_plugin(f"import {inner}\n", header="")
    line = one_error_line(run_plugin(cli, tmp_path, outer, "--policy", "pe-inner"))
    assert "policy 'pe-inner' raised ZeroDivisionError" in line, line
    assert f"(module {inner}, imported by --plugin {outer})" in line, line


def test_builtins_are_called_directly_so_their_bugs_stay_internal(monkeypatch):
    schedule = get_policy("linear")
    monkeypatch.setattr(type(schedule), "budget", lambda self, state: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        plugin_call("policy", schedule, "budget", None)


def test_out_of_memory_keeps_its_type(write_plugin):
    module = write_plugin(
        """
        import torch

        @register_policy("pe-oom")
        class Oom(Policy):
            def budget(self, state):
                raise torch.OutOfMemoryError("CUDA out of memory")
        """
    )
    import_plugin(module)
    import torch

    with pytest.raises(torch.OutOfMemoryError):
        plugin_call("policy", get_policy("pe-oom"), "budget", None)


# -- 2. outputs are validated, naming the plugin ----------------------------------------------

SCHEDULE = """
@register_policy("{name}")
class Odd(Policy):
    def should_query(self, state):
        return {should}
    def budget(self, state):
        return {budget}
"""


@pytest.mark.parametrize(
    ("should", "budget", "expected"),
    [
        ("True", "float('nan')", "returned nan from budget(); expected a finite integer >= 0"),
        ("True", "float('inf')", "returned inf from budget()"),
        ("True", "2.5", "returned 2.5 from budget()"),
        ("True", "-3", "returned a negative budget -3 from budget()"),
        ("True", "True", "returned a bool (True) from budget()"),
        ("True", "'5'", "returned '5' (str) from budget()"),
        ("1", "5", "returned 1 (int) from should_query(); expected True"),
    ],
    ids=["nan", "inf", "fraction", "negative", "bool", "str", "int-should-query"],
)
def test_bad_schedule_outputs_are_refused(cli, tmp_path, write_plugin, should, budget, expected):
    name = "pe-odd-schedule"
    module = write_plugin(SCHEDULE.format(name=name, should=should, budget=budget))
    line = one_error_line(run_plugin(cli, tmp_path, module, "--policy", name))
    assert line.startswith(f"error: policy '{name}' "), line
    assert expected in line and f"(plugin module {module})" in line, line


def test_a_valid_plugin_schedule_runs(cli, tmp_path, write_plugin):
    module = write_plugin(
        SCHEDULE.format(
            name="pe-fine", should="np.bool_(state.at_round_start)", budget="np.float32(7.0)"
        )
    )
    res = run_plugin(cli, tmp_path, module, "--policy", "pe-fine")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "results.json").exists()


def test_budget_and_should_query_checks():
    sched = get_policy("linear")
    assert check_budget(sched, np.int64(4)) == 4 and check_budget(sched, 3.0) == 3
    assert check_budget(sched, np.array(2)) == 2 and check_budget(sched, 0) == 0
    assert check_should_query(sched, np.True_) is True
    with pytest.raises(RuntimeError, match="policy 'linear' returned nan"):  # built-in: a bug
        check_budget(sched, float("nan"))


ANCHORS = """
@register_anchors("{name}")
class Odd(Anchors):
    def select(self, labels, num_classes, seed, features=None):
        return {value}
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("np.array([0.0, 1.0, 2.0])", "returned float64 anchors; expected integer indices"),
        ("np.zeros(0, dtype=np.int64)", "returned no anchors; expected at least one"),
        ("np.array([0, 3, 3, 5])", "returned 1 duplicate indices (e.g. 3)"),
        ("np.array([0, 10**6])", "returned index 1000000; expected indices in [0, "),
        ("np.array([-1, 2])", "returned index -1"),
        ("None", "returned a NoneType; expected a numpy array"),
    ],
    ids=["float", "empty", "duplicate", "out-of-range", "negative", "none"],
)
def test_bad_anchors_are_refused(cli, tmp_path, write_plugin, value, expected):
    name = "pe-odd-anchors"
    module = write_plugin(ANCHORS.format(name=name, value=value))
    line = one_error_line(run_plugin(cli, tmp_path, module, "--anchors", name))
    assert line.startswith(f"error: anchors '{name}' "), line
    assert expected in line and f"(plugin module {module})" in line, line


def test_select_anchors_returns_checked_int64(write_plugin):
    module = write_plugin(ANCHORS.format(name="pe-list-anchors", value="[4, 1, 2]"))
    import_plugin(module)
    anchors = PLUGIN_REGISTRIES["anchors"].create("pe-list-anchors")
    out = select_anchors(anchors, np.zeros(6, np.int64), 1, 0)
    assert out.dtype == np.int64 and out.tolist() == [4, 1, 2]
    with pytest.raises(PluginError, match=r"'pe-list-anchors' returned index 4; .*\[0, 3\)"):
        check_anchors(anchors, out, 3)


def test_bad_quotas_name_the_plugin_and_its_origin(cli, tmp_path, write_plugin):
    module = write_plugin(
        """
        @register_allocation("pe-greedy")
        class Greedy(Allocation):
            def quotas(self, state, budget):
                return state.remaining_counts + 1
        """
    )
    line = one_error_line(run_plugin(cli, tmp_path, module, "--allocation", "pe-greedy"))
    assert "allocation 'pe-greedy' returned quotas" in line, line
    assert f"(plugin module {module})" in line, line


def test_the_loop_checks_any_anchor_set_and_schedule():
    from flexsample import Policy
    from flexsample.engine.pool import Pool

    from .test_loop import make_loop

    loop, _ = make_loop()
    loop.pool = Pool(loop.pool.labels, 3)
    with pytest.raises(FlexsampleError, match=r"start\(anchors\) got no anchors; expected"):
        loop.start(np.zeros(0, np.int64))
    with pytest.raises(FlexsampleError, match=r"got index 48; expected indices in \[0, 48\)"):
        loop.start(np.array([0, 48]))

    class Drifting(Policy):  # a user's own schedule, driven from Python: named by its class
        def should_query(self, state):
            return True

        def budget(self, state):
            return -1

    loop, _ = make_loop()
    loop.schedule = Drifting()
    with pytest.raises(
        PluginError,
        match=r"policy 'Drifting' returned a negative budget -1 .*"
        rf"\(module {__name__}\)",
    ):
        loop.run()


# -- 3. taken names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decorator", "kind", "taken"),
    [
        ("register_estimator", "estimator", "entropy"),
        ("register_policy", "policy", "linear"),
        ("register_allocation", "allocation", "difficulty"),
        ("register_anchors", "anchors", "prototype"),
    ],
)
def test_a_plugin_cannot_take_a_builtin_name(cli, tmp_path, write_plugin, decorator, kind, taken):
    module = write_plugin(f"@{decorator}('{taken}')\nclass Mine:\n    pass\n")
    line = one_error_line(run_plugin(cli, tmp_path, module))
    assert line == (
        f"error: plugin module {module} registers {kind} '{taken}', which is a built-in name; "
        "choose another name"
    )


def test_list_refuses_a_builtin_name_too(cli, write_plugin):
    module = write_plugin("@register_estimator('margin')\nclass Mine:\n    pass\n")
    line = one_error_line(cli("list", "--plugin", module))
    assert f"plugin module {module} registers estimator 'margin', which is a built-in" in line


def test_two_plugins_cannot_share_a_name(cli, tmp_path, write_plugin):
    first = write_plugin("@register_estimator('pe-shared')\nclass A:\n    pass\n")
    second = write_plugin("@register_estimator('pe-shared')\nclass B:\n    pass\n")
    res = cli("run", *TINY, "--out", tmp_path / "r", "--plugin", first, "--plugin", second)
    assert one_error_line(res) == (
        f"error: plugin module {second} registers estimator 'pe-shared', already registered by "
        f"plugin module {first}; choose another name"
    )


def test_registration_errors_are_value_errors_with_one_line():
    reg = PLUGIN_REGISTRIES["estimator"]
    with pytest.raises(RegistrationError, match="which is a built-in name") as info:
        reg.register("random")(type("Mine", (), {}))
    assert isinstance(info.value, ValueError) and isinstance(info.value, FlexsampleError)


# -- 4. --plugin for a module in the current folder, in a real process ------------------------


def flexsample_cmd() -> list[str]:
    """The installed console script (which, unlike python -m or -c, leaves cwd off sys.path)."""
    script = Path(sys.executable).parent / "flexsample"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-c", "from flexsample.cli.app import main; main()"]


def run_process(cwd: Path, *args: str, env: dict[str, str] | None = None):
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env or {})
    return subprocess.run(
        [*flexsample_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def one_process_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_plugin_module_in_the_current_folder_works(tmp_path):
    (tmp_path / "my_module.py").write_text(
        "import numpy as np\nfrom flexsample import Estimator, register_estimator\n"
        "from my_helper import POWER\n\n"
        "@register_estimator('margin-squared')\n"
        "class MarginSquared(Estimator):\n"
        "    needs = frozenset({'probs'})\n\n"
        "    def score(self, ctx, candidates):\n"
        "        p = np.sort(ctx.probs(candidates), axis=1)\n"
        "        return 1.0 - (p[:, -1] - p[:, -2]) ** POWER\n"
    )
    (tmp_path / "my_helper.py").write_text("POWER = 2\n")
    proc = run_process(
        tmp_path,
        "run",
        *TINY,
        "--out",
        "out",
        "--plugin",
        "my_module",
        "--estimator",
        "margin-squared",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config"]["estimator"] == (
        "margin-squared"
    )
    assert (tmp_path / "out" / "results.json").exists()


@pytest.fixture
def in_tmp_folder(tmp_path, monkeypatch, restore_registries):
    """The current folder is tmp_path; sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("cwd_", "needs_dep")):
            del sys.modules[name]


def test_the_current_folder_is_searched_in_process(cli, in_tmp_folder):
    (in_tmp_folder / "cwd_plugin_q.py").write_text(
        "from flexsample import Estimator, register_estimator\n\n"
        "@register_estimator('pe-from-cwd')\n"
        "class FromCwd(Estimator):\n"
        '    """Found in the current folder."""\n'
    )
    res = cli("list", "--plugin", "cwd_plugin_q")
    assert res.exit_code == 0, res.output
    assert "pe-from-cwd" in res.stdout and "[plugin: cwd_plugin_q]" in res.stdout


def test_unimportable_plugin_names_get_a_hint(cli, in_tmp_folder):
    line = one_error_line(cli("list", "--plugin", "cwd_not_here_mod"))
    assert "cannot import plugin module 'cwd_not_here_mod'" in line
    assert f"in the current folder {in_tmp_folder}" in line and "cwd_not_here_mod.py" in line
    (in_tmp_folder / "needs_dep.py").write_text("import some_missing_dependency_xyz\n")
    line = one_error_line(cli("list", "--plugin", "needs_dep"))
    assert "cannot import plugin module 'needs_dep'" in line
    assert "No module named 'some_missing_dependency_xyz'" in line and "install it" in line
    line = one_error_line(cli("list", "--plugin", "my_module.py"))
    assert "looks like a file path" in line and "--plugin my_module for my_module.py" in line


def write_distribution(site: Path, group: str, entry: str, module: str, source: str) -> None:
    """A minimal installed distribution on `site` declaring one entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}\n")


def test_entry_point_plugins_are_named_by_their_entry_point(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(
        site,
        "flexsample.policies",
        "ep-fails",
        "ep_fails_mod",
        "from flexsample import Policy, register_policy\n\n"
        "@register_policy('ep-fails')\n"
        "class Fails(Policy):\n"
        "    def should_query(self, state):\n"
        "        return True\n"
        "    def budget(self, state):\n"
        "        return float('nan')\n",
    )
    proc = run_process(
        tmp_path, "run", *TINY, "--out", "o", "--policy", "ep-fails", env={"PYTHONPATH": str(site)}
    )
    line = one_process_error(proc)
    assert "policy 'ep-fails' returned nan from budget()" in line, line
    assert "(entry point 'ep-fails = ep_fails_mod' in group flexsample.policies)" in line, line
    assert not (tmp_path / "o" / "results.json").exists()


def test_an_entry_point_cannot_take_a_builtin_name(cli, write_plugin, monkeypatch):
    module = write_plugin("@register_estimator('margin')\nclass Clash(Estimator):\n    pass\n")
    ep = EntryPoint("ep-clash", module, "flexsample.estimators")
    monkeypatch.setattr(
        registry_mod, "entry_points", lambda group: [ep] if group == ep.group else []
    )
    monkeypatch.setattr(PLUGIN_REGISTRIES["estimator"], "_loaded", False)
    assert one_error_line(cli("list")) == (
        f"error: plugin entry point 'ep-clash = {module}' in group flexsample.estimators "
        "registers estimator 'margin', which is a built-in name; choose another name"
    )


def test_an_exception_in_a_plugins_load_state_dict_names_it(write_plugin):
    """Resume restores a plugin's state through the same guard as its other methods."""
    from flexsample.engine.registries import get_estimator

    from .test_loop import make_loop

    module = write_plugin(
        """
        @register_estimator("pe-no-restore")
        class Boom(Estimator):
            needs = frozenset({"probs"})
            def score(self, ctx, candidates):
                return np.zeros(len(candidates))
            def load_state_dict(self, state):
                raise ValueError("cannot restore")
        """
    )
    import_plugin(module)
    loop, _ = make_loop()
    state = loop.state_dict()
    loop.estimator = get_estimator("pe-no-restore")
    with pytest.raises(
        PluginError,
        match=r"estimator 'pe-no-restore' raised ValueError: "
        r"cannot restore in load_state_dict\(\)",
    ):
        loop.load_state_dict(state)
