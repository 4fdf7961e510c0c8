"""Recipes: named bundles of option values under the user's own (`--recipe`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.bench import plan_cells
from flexsample.workflows.config import RunConfig, build_config, explain_config

from .conftest import one_error_line

PLUGINS = Path(__file__).parent / "plugins"


def test_paper_recipe_values_and_what_overrides_them(tmp_path):
    cfg, from_recipe = explain_config([("the command line", {"recipe": "paper", "lr": 0.02})])
    assert (cfg.optimizer, cfg.momentum, cfg.batch_size, cfg.restart, cfg.cosine) == (
        "sgd",
        0.9,
        32,
        "none",
        "steps",
    )
    assert (cfg.policy, cfg.allocation, cfg.sampler, cfg.loss) == (
        "plateau",
        "remaining-difficulty",
        "class-aware",
        "cb-focal",
    )
    assert cfg.loss_options == {"cb_beta": 0.9999, "focal_gamma": 1.0}
    assert cfg.estimator_options["mc_samples"] == 10
    assert cfg.anchors_options["distance"] == "euclidean"
    assert cfg.lr == 0.02 and "lr" not in from_recipe  # a flag wins over the recipe
    assert "optimizer" in from_recipe and "policy_options" in from_recipe
    # a config file wins too, and a component the user chooses drops the recipe's options
    toml = tmp_path / "c.toml"
    toml.write_text('recipe = "paper"\npolicy = "linear"\nbatch_size = 16\n')
    cfg = build_config(
        [
            ("config file", json.loads("{}")),
            ("f", {"recipe": "paper", "policy": "linear", "batch_size": 16}),
        ]
    )
    assert cfg.policy == "linear" and cfg.policy_options == {} and cfg.batch_size == 16
    # switching the optimizer back drops the recipe's momentum (it no longer applies)
    cfg = build_config([("the command line", {"recipe": "paper", "optimizer": "adamw"})])
    assert "momentum" not in cfg.model_dump()


def test_paper_on_isic_takes_the_authors_model(tmp_path):
    values = {"recipe": "paper", "dataset": "isic2019", "data_dir": str(tmp_path)}
    cfg = build_config([("c", values)])
    assert (cfg.backbone, cfg.pretrained, cfg.dataset_options["image_size"]) == (
        "resnet50",
        "imagenet",
        224,
    )
    cfg = build_config(
        [
            (
                "c",
                {
                    "recipe": "paper",
                    "dataset": "isic2019",
                    "data_dir": str(tmp_path),
                    "recipe_options": {"pretrained": False},
                },
            )
        ]
    )
    assert cfg.pretrained is None
    digits = build_config([("c", {"recipe": "paper"})])
    assert digits.backbone == "auto" and digits.pretrained is None  # the dataset's default


def test_paper_control_trains_the_same_recipe_on_the_full_set():
    paper = build_config([("c", {"recipe": "paper"})]).model_dump()
    control = build_config([("c", {"recipe": "paper-control"})]).model_dump()
    assert control["policy"] == "full"
    same = (
        "optimizer",
        "lr",
        "momentum",
        "batch_size",
        "restart",
        "cosine",
        "loss",
        "loss_options",
        "sampler",
        "rounds",
        "epochs_per_round",
    )
    assert {k: control[k] for k in same} == {k: paper[k] for k in same}


def test_print_config_shows_the_recipe_and_reloads(cli, tmp_path):
    res = cli("run", "--recipe", "paper", "--print-config", "--seed", "4")
    assert res.exit_code == 0, res.output
    assert "from --recipe paper" in res.stderr and "optimizer" in res.stderr
    path = tmp_path / "resolved.json"
    path.write_text(res.stdout)
    again = cli("run", "--config", path, "--print-config")
    assert json.loads(again.stdout) == json.loads(res.stdout)


def test_recipe_errors_are_one_line(cli):
    line = one_error_line(cli("run", "--recipe", "papr", "--print-config"))
    assert "unknown recipe 'papr' (did you mean 'paper'" in line
    line = one_error_line(cli("run", "--recipe-opt", "pretrained=false", "--print-config"))
    assert "without --recipe" in line
    line = one_error_line(cli("run", "--recipe", "paper", "--recipe-opt", "x=1", "--print-config"))
    assert "recipe 'paper' has no option 'x'" in line


def test_a_plugin_registers_a_recipe(cli, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    res = cli(
        "run",
        "--plugin",
        "two_option_plugin",
        "--recipe",
        "test-quick",
        "--recipe-opt",
        "rounds=3",
        "--print-config",
    )
    assert res.exit_code == 0, res.output
    values = json.loads(res.stdout)
    assert (values["estimator"], values["rounds"]) == ("entropy", 3)
    listed = cli("list", "recipe", "--plugin", "two_option_plugin")
    assert "recipe test-quick" in listed.stdout and "recipe paper" in listed.stdout


def test_bench_plans_one_method_per_recipe(tmp_path):
    base = RunConfig()
    bases = {name: build_config([("c", {"recipe": name})]) for name in ("paper", "paper-control")}
    cells = plan_cells(
        base, tmp_path, None, None, None, [100.0, 10.0], [0, 1], None, recipe_bases=bases
    )
    assert sorted({c.method for c in cells}) == ["recipe:paper", "recipe:paper-control"]
    assert len(cells) == 2 * 2 * 2
    ratios = {c.config.dataset_options["imbalance_ratio"] for c in cells}
    assert ratios == {100.0, 10.0}
    with_ce = plan_cells(base, tmp_path, None, None, None, None, [0], ["ce"], recipe_bases=bases)
    assert sorted(c.method for c in with_ce) == [
        "baseline:ce",
        "recipe:paper",
        "recipe:paper-control",
    ]
    with pytest.raises(FlexsampleError):
        build_config([("c", {"recipe": 5})])
