"""Each component owns its options: plugins set theirs from the CLI, a file and Python; flags of
components that were not chosen are refused; one run path for the CLI and the API; old
config.json files migrate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flexsample
from flexsample.engine.errors import FlexsampleError
from flexsample.workflows import components
from flexsample.workflows.components import KINDS, RULES, SHORTCUTS, Rule, owners, registry
from flexsample.workflows.config import RunConfig, build_config, resolve_config

from .conftest import TINY, one_error_line

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.chdir(PLUGINS)
    return "two_option_plugin"


def _scores(run_dir: Path) -> float:
    import numpy as np

    with np.load(run_dir / "scores.npz") as z:
        return float(min(z[k].min() for k in z.files if k.startswith("score")))


def test_plugin_options_from_cli_file_and_python(cli, tmp_path, plugin_path):
    import two_option_plugin as mod

    base = ["--plugin", plugin_path, "--estimator", "test-margin-power", *TINY, "--seed", "3"]
    res = cli(
        "run",
        *base,
        "--estimator-opt",
        "power=3",
        "--estimator-opt",
        "offset=5",
        "--out",
        tmp_path / "cli",
    )
    assert res.exit_code == 0, res.output
    assert (mod.MarginPower.last.power, mod.MarginPower.last.offset) == (3.0, 5)
    assert mod.MarginPower.last.seed == 7  # the run's --seed 3 is not the plugin's option
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())["config"]
    assert saved["estimator_options"] == {"power": 3.0, "offset": 5, "seed": 7}
    assert _scores(tmp_path / "cli") >= 5  # every score carries the offset

    toml = tmp_path / "c.toml"
    toml.write_text(
        f'plugin = ["{plugin_path}"]\nestimator = "test-margin-power"\n'
        "[estimator_options]\npower = 1.5\noffset = 2\n"
    )
    cfg = resolve_config(toml, {})
    assert cfg.estimator_options == {"power": 1.5, "offset": 2, "seed": 7}
    res = cli("run", "--config", toml, *TINY, "--out", tmp_path / "toml")
    assert res.exit_code == 0, res.output
    assert (mod.MarginPower.last.power, mod.MarginPower.last.offset) == (1.5, 2)

    out = flexsample.run(
        plugin=[plugin_path],
        estimator="test-margin-power",
        estimator_options={"power": 0.5, "offset": 1},
        rounds=3,
        epochs_per_round=2,
        device="cpu",
        out=tmp_path / "api",
    )
    assert out.config.estimator_options["power"] == 0.5
    assert (mod.MarginPower.last.power, mod.MarginPower.last.offset) == (0.5, 1)

    # a wrong value or name: one line naming the component and the option
    line = one_error_line(cli("run", *base, "--estimator-opt", "power=0", "--out", tmp_path / "x"))
    assert "estimator 'test-margin-power' option 'power'" in line and "0 < x <= 10" in line
    line = one_error_line(cli("run", *base, "--estimator-opt", "powr=2", "--out", tmp_path / "x"))
    assert "no option 'powr' (did you mean 'power'?)" in line
    assert not (tmp_path / "x").exists()


def test_plugin_options_show_in_list_and_help(cli, plugin_path):
    res = cli("list", "test-margin-power", "--plugin", plugin_path)
    assert res.exit_code == 0, res.output
    assert "power (float, default 2.0): exponent of the margin term" in res.stdout
    assert (
        "offset (int, default 0): added to every score; accepted: an integer, 0 <= x <= 100"
        in res.stdout
    )
    helped = cli("run", "--help")
    assert "--estimator-opt" in helped.stdout and "flexsample list" in helped.stdout


def _declares(kind: str, name: str, option: str) -> bool:
    return option in registry(kind).options(name).model_fields


def _value(kind: str, option: str):
    """A valid value of `option` (the default of the first component declaring it)."""
    who = owners(kind, option)[0]
    info = registry(kind).options(who).model_fields[option]
    default = info.get_default(call_default_factory=True)
    if default is not None:
        return default
    return {
        "data_dir": str(Path(__file__).parent),  # paths are checked before anything is built
        "splits_dir": str(Path(__file__).parent),
        "image_size": 8,
        "profile": "exponential",
        "num_classes": 3,
        "datalist": __file__,
    }.get(option, 1)


@pytest.mark.parametrize("option", sorted(SHORTCUTS))
def test_every_shortcut_against_every_component_of_its_kind(option):
    """A flag is accepted exactly by the components that declare it; for the others it is one
    line naming the components that take it."""
    kind = SHORTCUTS[option]
    if option == "combine":  # an option of '+' combinations, not of any one estimator
        cfg = build_config(
            [("the command line", {"estimator": "mcdropout+density", option: "rank-product"})]
        )
        assert cfg.estimator_options["combine"] == "rank-product"
        with pytest.raises(
            FlexsampleError,
            match="--combine merges the parts of an estimator combination .e.g. --estimator "
            "mcdropout.density.; the chosen estimator 'density' is one estimator: drop --combine",
        ):
            build_config([("the command line", {"estimator": "density", option: "rank-product"})])
        return
    value = _value(kind, option)
    for name in registry(kind).names():
        if _declares(kind, name, option):
            cfg = build_config([("the command line", {kind: name, option: value})])
            assert cfg.option(kind, option) == value
        else:
            with pytest.raises(FlexsampleError) as err:
                build_config([("the command line", {kind: name, option: value})])
            text = str(err.value)
            assert text.startswith(f"--{option.replace('_', '-')} is an option of {kind} ")
            assert f"the chosen {kind} '{name}' does not take it" in text
            for who in owners(kind, option):
                assert f"'{who}'" in text


def test_every_section_key_is_checked_for_every_component():
    for kind in KINDS:
        for name in registry(kind).names():
            with pytest.raises(FlexsampleError, match=f"{kind} '{name}' has no option 'bogus'"):
                build_config([("the command line", {kind: name, f"{kind}_options": {"bogus": 1}})])


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.field)
def test_every_conditional_flag_is_refused_without_its_condition(rule):
    value = RunConfig.model_fields[rule.field].default
    value = {"tau": 0.5, "ssl_batch_size": 32}.get(rule.field, value)
    off = {
        "init": "random",
        "anchors": "random",
        "acquisition": "topk",
        "mc_source": "dropout",
        "decouple": "none",
    }
    with pytest.raises(FlexsampleError, match=f"--{rule.field.replace('_', '-')} applies "):
        build_config([("the command line", {**off, rule.field: value})])
    assert rule.field not in RunConfig(**off).model_dump()  # nor in the hash


def test_mc_samples_is_refused_under_snapshots_and_left_out_of_the_hash():
    with pytest.raises(FlexsampleError, match="--mc-samples does not apply under --mc-source"):
        build_config([("the command line", {"mc_source": "snapshots", "mc_samples": 5})])
    cfg = build_config([("the command line", {"mc_source": "snapshots"})])
    assert "mc_samples" not in cfg.estimator_options


def test_a_lower_layer_s_options_go_with_its_component(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('policy = "adaptive"\npatience = 9\n')
    assert resolve_config(toml, {}).policy_options["patience"] == 9
    cfg = resolve_config(toml, {"policy": "linear"})  # the flag chose another policy
    assert cfg.policy == "linear" and cfg.policy_options == {}


def test_cli_and_api_share_one_path(cli, tmp_path, monkeypatch):
    """A rule added in one place (the rule table) is applied by `flexsample run` and by
    `flexsample.run` alike, with the same line."""
    rule = Rule(
        "lr", lambda c: c.lr < 1, "below 1 (a test rule)", lambda c: f"--lr {c.lr}", ("lr",)
    )
    monkeypatch.setattr(components, "RULES", (*RULES, rule))
    line = one_error_line(cli("run", "--lr", "2", *TINY, "--out", tmp_path / "a"))
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(lr=2, rounds=3, epochs_per_round=2, device="cpu", out=tmp_path / "b")
    assert line == f"error: {err.value}" and "--lr applies below 1" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # and a run-path rule that lived only in the CLI before: --log-dir without --log-to
    line = one_error_line(cli("run", "--log-dir", tmp_path, *TINY, "--out", tmp_path / "c"))
    with pytest.raises(FlexsampleError) as err:
        flexsample.run(log_dir=tmp_path, out=tmp_path / "d")
    assert line == f"error: {err.value}"


def test_an_old_flat_config_json_still_loads(tmp_path):
    """config.json written before options were scoped: what applied is placed, the rest
    (options of components that were not chosen, inapplicable values) is dropped."""
    old = {
        "dataset": "digits-lt",
        "imbalance_ratio": 10.0,
        "data_seed": 2,
        "data_dir": None,
        "splits_dir": None,
        "image_size": None,
        "skip_missing": False,
        "profile": None,
        "num_classes": None,
        "policy": "adaptive",
        "patience": 4,
        "query_ratio": 0.5,
        "jumps": 3,
        "allocation": "difficulty",
        "difficulty_floor": 0.05,
        "anchors": "prototype",
        "anchor_features": "auto",
        "anchor_scaling": 0.2,
        "anchor_floor": 2,
        "estimator": "mcdropout",
        "mc_samples": 8,
        "mc_score": "bald",
        "mc_mode": "head",
        "knn": None,
        "density_beta": 1.0,
        "combine": "rank-mean",
        "acquisition": "topk",
        "acquisition_beta": 1.0,
        "loss": "ce",
        "focal_gamma": 2.0,
        "tau": None,
        "decouple": "none",
        "decouple_epochs": 10,
        "rounds": 2,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": old, "split_hash": "x"}))
    cfg = resolve_config(path, {})
    assert cfg.dataset_options == {"imbalance_ratio": 10.0, "data_seed": 2, "image_size": None}
    assert cfg.policy_options == {"patience": 4, "query_ratio": 0.5}
    assert cfg.estimator_options == {"mc_samples": 8, "mc_score": "bald", "mc_mode": "head"}
    assert cfg.anchors_options["anchor_scaling"] == 0.2 and cfg.loss_options == {}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flexsample":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else "flexsample"


ORDER = {
    "engine": 0,
    "estimators": 1,
    "policies": 1,
    "datasets": 2,
    "training": 3,
    "workflows": 4,
    "integrations": 5,
    "cli": 6,
    "flexsample": 6,
}


def _private_helper(module: str) -> bool:
    """flexsample._version, _lazy, _optional: dependency-free helpers every layer may use
    (checked below to import nothing of the package)."""
    parts = module.split(".")
    return len(parts) >= 2 and parts[0] == "flexsample" and parts[1].startswith("_")


def test_private_helpers_import_nothing_of_the_package():
    """...but the engine's error types (the lowest layer)."""
    import ast

    for path in sorted(Path(flexsample.__file__).parent.glob("_[!_]*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert (
                    not node.level
                    and node.module in (None, "flexsample.engine.errors")
                    or not (node.module or "").startswith("flexsample")
                    and not node.level
                ), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("flexsample") for a in node.names), path


def test_no_import_goes_upward():
    """DESIGN.md's layer order over every import of every module, lazy ones included."""
    import ast

    root = Path(flexsample.__file__).resolve().parents[1]
    folders = {
        "flexsample": root / "flexsample",
        **{k: root / k for k in ORDER if k != "flexsample"},
    }
    bad = []
    for layer, folder in folders.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            here = ".".join(["flexsample", *([] if layer == "flexsample" else [layer]), *rel.parts])
            if here.endswith(".__init__"):
                here = here[: -len(".__init__")]
                package = here
            else:
                package = here.rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        up = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join([*up, base] if base else up)
                    targets = [base] + [f"{base}.{a.name}" for a in node.names]
                for target in targets:
                    there = _layer(target)
                    if there is None or _private_helper(target):
                        continue
                    if ORDER[there] > ORDER[_layer(here)]:
                        bad.append(f"{path.relative_to(root)}: {here} imports {target}")
    assert not bad, "\n".join(sorted(set(bad)))
