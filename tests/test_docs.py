"""The documentation site stays true to the code (issue 21).

- The command-line page (`docs/gen_cli.py`, rendered into the site by `docs/hooks.py`) lists
  every command and every flag that `flexsample COMMAND --help` prints, so a new or renamed
  flag cannot be missing from it.
- Every Python example of docs/extending.md (one plugin of each kind) runs as the page says:
  saved as a file and run with `python FILE`, and the estimator one through `--plugin` too.
- The navigation names every page and every page is in the navigation; the README keeps the
  lines CI relies on and stays short.

The site itself is built by `mkdocs build --strict` in CI, not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
GENERATED = {"cli.md", "results.md"}  # written by docs/hooks.py at build time


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_cli() -> ModuleType:
    return load(DOCS / "gen_cli.py", "flexsample_docs_gen_cli")


@pytest.fixture(scope="module")
def cli_page(gen_cli: ModuleType) -> str:
    return gen_cli.render()


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update({"COLUMNS": "250", "OMP_NUM_THREADS": "1", **extra})
    return out


def help_text(*command: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "flexsample", *command, "--help"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


# -- the command-line page ---------------------------------------------------------------------
def test_cli_page_has_a_section_per_command(gen_cli: ModuleType, cli_page: str) -> None:
    names = gen_cli.command_names()
    assert {"run", "eval", "list", "splits", "bench"} <= set(names)
    for name in names:
        assert f"## `flexsample {name}`" in cli_page
        assert f"](#flexsample-{name})" in cli_page  # the table of commands links to it


def test_cli_page_lists_every_parameter_of_the_app(gen_cli: ModuleType, cli_page: str) -> None:
    """Walking the click tree independently of the renderer: every option spelling and every
    argument of every command is on the page, in the section of its command."""
    root = gen_cli.root_command()
    root_ctx = gen_cli._click_context(root, "flexsample")
    sections = re.split(r"^## ", cli_page, flags=re.M)
    by_command = {s.split("`")[1]: s for s in sections if s.startswith("`")}
    for flag in ("--version", "--help"):
        assert f"`{flag}`" in by_command["flexsample"]
    for name, command in root.commands.items():
        section = by_command[f"flexsample {name}"]
        ctx = gen_cli._click_context(command, name, parent=root_ctx)
        params = gen_cli.visible_params(command, ctx)
        assert params
        for param in params:
            for flag in gen_cli.param_flags(param):
                assert f"`{flag}`" in section, f"{flag} of `flexsample {name}` is not on the page"


@pytest.mark.parametrize("command", [(), ("run",), ("eval",), ("list",), ("splits",), ("bench",)])
def test_every_flag_help_prints_is_on_the_page(command: tuple[str, ...], cli_page: str) -> None:
    """What `--help` prints (another path through typer than the renderer's) names no flag
    the page lacks."""
    printed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", help_text(*command)))
    assert printed
    missing = sorted(f for f in printed if f"`{f}`" not in cli_page and f not in cli_page)
    assert not missing, f"flags printed by --help but not on the CLI page: {missing}"


def test_cli_page_escapes_what_markdown_would_eat(cli_page: str) -> None:
    assert "runs/&lt;timestamp&gt;-&lt;estimator&gt;-&lt;policy&gt;" in cli_page
    for line in cli_page.splitlines():
        if line.startswith("| `--"):
            assert line.count(" | ") == 2, line  # three cells: no unescaped pipe in the help


# -- the examples of the extending page -----------------------------------------------------------
def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(encoding="utf-8"), re.M | re.S)


EXTENDING = python_blocks(DOCS / "extending.md")


def registered_name(block: str) -> str:
    found = re.search(r"\.register\(\"([^\"]+)\"\)|register_\w+\(\"([^\"]+)\"\)", block)
    assert found, block[:200]
    return found.group(1) or found.group(2)


def test_extending_has_one_example_of_each_kind() -> None:
    kinds = " ".join(EXTENDING)
    for decorator in (
        "@register_estimator",
        "@register_policy",
        "@register_allocation",
        "@register_anchors",
        "@LOSSES.register",
        "@DATASETS.register",
        "@TRACKERS.register",
        "@LAUNCHERS.register",
    ):
        assert decorator in kinds, decorator
    assert "def select(self, ctx, candidates, k)" in kinds  # and a batch selector


@pytest.mark.slow
@pytest.mark.parametrize("block", EXTENDING, ids=[registered_name(b) for b in EXTENDING])
def test_extending_example_runs(block: str, tmp_path: Path) -> None:
    """The file as the page shows it, run with `python FILE` in an empty folder."""
    (tmp_path / "my_plugins.py").write_text(block, encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "my_plugins.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = re.search(r"out=\"([^\"]+)\"", block)
    assert out, "each example writes where the page says"
    folder = tmp_path / out.group(1)
    if "flexsample.bench(" in block:
        assert (folder / "bench.csv").is_file() and (folder / "summary.md").is_file()
    else:
        results = json.loads((folder / "results.json").read_text())
        assert 0.0 <= results["test"]["balanced_accuracy"] <= 1.0
        if "@TRACKERS.register" in block:  # the tracker wrote its file
            assert (folder / "jsonl" / "log.jsonl").read_text().count('"final"') == 1
        else:  # the plugin was the component the run used
            config = json.loads((folder / "config.json").read_text())
            assert registered_name(block) in json.dumps(config)


@pytest.mark.slow
def test_the_estimator_example_works_through_plugin(tmp_path: Path) -> None:
    """`flexsample run --plugin my_plugins --estimator margin-squared --estimator-opt power=3`
    and `flexsample list --plugin my_plugins margin-squared`, as the page says."""
    block = next(b for b in EXTENDING if "margin-squared" in b)
    (tmp_path / "my_plugins.py").write_text(block, encoding="utf-8")

    def flexsample(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flexsample", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env(),
            timeout=600,
        )

    listed = flexsample("list", "--plugin", "my_plugins", "margin-squared")
    assert listed.returncode == 0, listed.stderr
    assert "power (float, default 2.0): exponent of the margin" in listed.stdout
    short = ["--rounds", "2", "--epochs-per-round", "1", "--quiet", "--device", "cpu"]
    res = flexsample(
        "run", "--plugin", "my_plugins", "--estimator", "margin-squared",
        "--estimator-opt", "power=3", *short, "--out", "cli-run",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    config = json.loads((tmp_path / "cli-run" / "config.json").read_text())["config"]
    assert config["estimator"] == "margin-squared"
    assert config["estimator_options"]["power"] == 3.0


# -- the site's structure ------------------------------------------------------------------------
def nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = nav_pages(config["nav"])
    assert len(pages) == len(set(pages))
    on_disk = {
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*")
        if p.suffix in (".md", ".ipynb") and ".ipynb_checkpoints" not in p.parts
    }
    assert set(pages) - GENERATED == on_disk, "mkdocs.yml nav and the pages in docs/ differ"
    assert GENERATED <= set(pages)
    assert config["hooks"] == ["docs/hooks.py"]


def test_the_api_tree_follows_the_package_dir_mapping(tmp_path: Path) -> None:
    hooks = load(DOCS / "hooks.py", "flexsample_docs_hooks")
    tree = hooks.build_api_tree(REPO, tmp_path / "api")
    for package in ("", "engine", "estimators", "policies", "workflows/launchers", "cli"):
        assert (tree / "flexsample" / package / "__init__.py").is_file(), package
    assert (tree / "flexsample" / "engine" / "pool.py").read_text() == (
        REPO / "engine" / "pool.py"
    ).read_text()


def test_the_tutorial_is_committed_without_outputs() -> None:
    notebook = json.loads((DOCS / "tutorial.ipynb").read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    source = "".join("".join(c["source"]) for c in code)
    for call in ("flexsample.run(", "flexsample.bench(", "register_estimator", "results.json"):
        assert call in source


def test_readme_stays_short_and_keeps_what_ci_runs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 170
    assert "pytest -n 2" in text  # .ci/run runs the README's test command
    assert 'pip install -e ".[dev,all,reference]"' in text
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[dev,all,reference,docs]"' in text  # the Development section
    assert '-e ".[dev,all,reference,docs]"' in ci and "mkdocs build --strict" in ci
    assert "\npytest -n 2\n" in ci
    assert "mkdocs build --strict" in text
