"""Every registered estimator, policy, allocation, anchor strategy, loss and sampler runs
from the CLI."""

from __future__ import annotations

import json

import pytest

from flexsample.engine.registries import (
    list_allocations,
    list_anchors,
    list_estimators,
    list_policies,
)
from flexsample.training.losses import LOSSES
from flexsample.training.samplers import SAMPLERS

from .conftest import TINY

CASES = (
    [("--estimator", e) for e in list_estimators()]
    + [("--estimator", "mcdropout+density")]
    + [("--policy", p) for p in list_policies()]
    + [("--allocation", a) for a in list_allocations()]
    + [("--anchors", a) for a in list_anchors()]
    + [("--loss", name) for name in LOSSES.names()]
    + [("--sampler", name) for name in SAMPLERS.names()]
)


@pytest.mark.parametrize(("flag", "name"), CASES, ids=[f"{f[2:]}={n}" for f, n in CASES])
def test_component_runs_from_the_cli(cli, tmp_path, flag, name):
    out = tmp_path / "run"
    est = [] if flag == "--estimator" else ["--estimator", "entropy"]
    res = cli("run", *TINY, *est, flag, name, "--out", out)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg[flag[2:].replace("-", "_")] == name
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test"]["balanced_accuracy"] <= 1.0
    if name == "balanced":  # under-sampling: the anchors only, never grown
        if flag == "--policy":
            assert results["final_subset_size"] < results["train_size"]
    elif (flag, name) == ("--policy", "plateau"):  # the authors' rule: nothing forces the rest in
        rounds = [json.loads(ln) for ln in (out / "rounds.jsonl").read_text().splitlines()]
        sizes = [r["subset_size"] for r in rounds]
        assert sizes == sorted(sizes) and sizes[-1] <= results["train_size"]
    elif flag in ("--policy", "--allocation", "--estimator"):
        assert results["final_subset_size"] == results["train_size"]
