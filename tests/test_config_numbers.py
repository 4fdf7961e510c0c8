"""Numbers in the run config: finite, bounded, never a boolean; checked before anything runs."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flexsample.workflows.config import NUMERIC_FIELDS, RunConfig, field_range

from .conftest import one_error_line


@pytest.mark.parametrize(
    ("flag", "value", "accepted"),
    [
        ("--lr", "inf", "a finite number, 0 < x <= 10"),
        ("--lr", "nan", "a finite number, 0 < x <= 10"),
        ("--lr", "100", "a finite number, 0 < x <= 10"),
        ("--mixup", "inf", "a finite number, 0 <= x <= 100"),
        ("--logit-adjust", "inf", "a finite number, 0 <= x <= 10"),
        ("--imbalance-ratio", "inf", "a finite number, 1 <= x <= 1000000"),
        ("--seed", str(2**64 + 5), "an integer, 0 <= x <= 4294967295"),
        ("--data-seed", str(2**32), "an integer, 0 <= x <= 4294967295"),
        ("--anchor-floor", str(10**23), "an integer, 1 <= x <= 1000000"),
        ("--workers", str(10**23), "an integer, 0 <= x <= 256"),
        ("--mc-samples", "100000", "an integer, 2 <= x <= 10000"),
        ("--rounds", "1000001", "an integer, 1 <= x <= 100000"),
        ("--image-size", "100000", "an integer, 4 <= x <= 4096"),
        ("--batch-size", "1000000", "an integer, 2 <= x <= 65536"),
        ("--knn", "100000", "an integer, 1 <= x <= 10000"),
    ],
)
def test_flags_out_of_range_fail_at_parse_time(cli, tmp_path, flag, value, accepted):
    out = tmp_path / "run"
    # --knn is an option of the kNN estimators: choose one so the value itself is judged
    chosen = ["--estimator", "density"] if flag == "--knn" else []
    line = one_error_line(cli("run", "--out", out, "--quiet", *chosen, flag, value))
    assert f"invalid {flag} = " in line and f"accepted: {accepted}" in line, line
    assert not out.exists()


def test_values_at_the_bounds_are_accepted(cli):
    args = [
        "--seed",
        str(2**32 - 1),
        "--data-seed",
        str(2**32 - 1),
        "--lr",
        "10",
        "--mixup",
        "100",
        "--logit-adjust",
        "10",
        "--workers",
        "256",
        "--mc-samples",
        "10000",
        "--anchor-floor",
        "1000000",
        "--rounds",
        "3",
    ]
    res = cli("run", *args, "--print-config")
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)
    assert cfg["seed"] == 2**32 - 1 and cfg["lr"] == 10 and cfg["workers"] == 256
    assert cfg["rounds"] == 3 and isinstance(cfg["rounds"], int)  # "3" from click stays an int


def test_every_numeric_field_is_bounded_and_says_so_in_its_help():
    from flexsample.engine.options import describe_option
    from flexsample.engine.registries import ESTIMATORS

    assert {"seed", "lr", "mixup", "logit_adjust", "workers"} <= set(NUMERIC_FIELDS)
    # mc_samples is now an option of the estimators that take it: bounded, and says so
    mc = ESTIMATORS.options("mcdropout").model_fields["mc_samples"]
    assert describe_option(mc) == "an integer, 2 <= x <= 10000"
    assert mc.description
    for name in NUMERIC_FIELDS:
        accepted = field_range(name)
        assert accepted is not None and " x <" in accepted, (name, accepted)
        bound = accepted.split(", ", 1)[1]
        assert RunConfig.model_fields[name].description.endswith(f"(accepted: {bound})"), name
    assert field_range("dataset") is None


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.toml", "seed = true", "invalid --seed = True in config file"),
        ("c.toml", "rounds = true", "invalid --rounds = True"),
        ("c.yaml", "rounds: yes", "invalid --rounds = True"),
        ("c.json", '{"lr": false}', "invalid --lr = False"),
        ("c.json", '{"workers": true}', "invalid --workers = True"),
    ],
)
def test_booleans_are_not_numbers(cli, tmp_path, name, text, expected):
    cfg = tmp_path / name
    cfg.write_text(text)
    line = one_error_line(cli("run", "--config", cfg, "--print-config"))
    assert expected in line and "got a boolean" in line and "accepted: " in line, line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rounds = 2.5", "invalid --rounds = 2.5 in config file"),
        ("seed = 0.5", "fractional part"),
        ("workers = 1e23", "invalid --workers = 1e+23"),
        ("lr = inf", "invalid --lr = inf"),
        ("mixup = nan", "invalid --mixup = nan"),
        ("anchor_floor = 1e23", "accepted: an integer, 1 <= x <= 1000000"),
    ],
)
def test_config_file_numbers(cli, tmp_path, text, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    line = one_error_line(cli("run", "--config", cfg, "--print-config"))
    assert expected in line and str(cfg) in line, line


def test_config_file_numbers_that_are_fine(cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('rounds = "4"\nepochs_per_round = 3.0\nlr = 1e-3\n')
    res = cli("run", "--config", cfg, "--print-config")
    assert res.exit_code == 0, res.output
    resolved = json.loads(res.stdout)
    assert resolved["rounds"] == 4 and resolved["epochs_per_round"] == 3
    assert resolved["lr"] == 1e-3


def test_python_api_refuses_booleans_and_infinities():
    with pytest.raises(ValidationError, match="got a boolean"):
        RunConfig(seed=True)
    with pytest.raises(ValidationError, match="finite number"):
        RunConfig(lr=float("inf"))
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="less than or equal to 256"):
        cfg.workers = 257
    cfg = RunConfig(dataset="imagefolder", dataset_options={"skip_missing": True})
    assert cfg.option("dataset", "skip_missing") is True  # real booleans stay booleans


def test_digits_lt_refuses_image_size(cli, tmp_path):
    line = one_error_line(
        cli(
            "run",
            "--out",
            tmp_path / "r",
            "--quiet",
            "--device",
            "cpu",
            "--rounds",
            "1",
            "--epochs-per-round",
            "1",
            "--image-size",
            "32",
        )
    )
    assert "--image-size 32: digits-lt images are 8x8" in line
    assert "synthetic-lt" in line and "imagefolder" in line
    assert not (tmp_path / "r").exists()


def test_image_size_is_honoured_or_refused_by_every_builder():
    from flexsample.datasets import DATASETS, build_dataset
    from flexsample.engine.errors import FlexsampleError

    assert build_dataset("digits-lt", {"image_size": 8}).image_size == 8  # its own size is fine
    ds = build_dataset(
        "synthetic-lt", {"profile": "exponential", "num_classes": 3, "image_size": 12}
    )
    assert ds.image_size == 12

    @DATASETS.register("fixed-size-test")
    def fixed(imbalance_ratio: float = 100.0):
        return build_dataset("digits-lt", {"imbalance_ratio": imbalance_ratio})

    try:
        with pytest.raises(FlexsampleError, match="'fixed-size-test' has a fixed image size"):
            build_dataset("fixed-size-test", {"image_size": 16})
        assert build_dataset("fixed-size-test", {}).image_size == 8
    finally:
        for table in ("_items", "_origin", "_source"):
            getattr(DATASETS, table, {}).pop("fixed-size-test", None)


def test_image_size_none_means_the_datasets_own_size_for_a_fixed_size_builder():
    from flexsample.datasets import DATASETS, build_dataset

    @DATASETS.register("fixed-size-none-test")
    def fixed(imbalance_ratio: float = 100.0):
        return build_dataset("digits-lt", {"imbalance_ratio": imbalance_ratio})

    try:  # None is "not given" (as build_estimator reads it), not an unknown option
        assert build_dataset("fixed-size-none-test", {"image_size": None}).image_size == 8
    finally:
        for table in ("_items", "_origin", "_source"):
            getattr(DATASETS, table, {}).pop("fixed-size-none-test", None)


def test_validate_config_is_one_flexsample_line():
    from flexsample.engine.errors import FlexsampleError
    from flexsample.workflows.config import validate_config

    assert validate_config({"seed": 3}).seed == 3
    with pytest.raises(
        FlexsampleError,
        match=r"^invalid --seed = 99999999999 in the bench grid: "
        r".*accepted: an integer, 0 <= x <= 4294967295$",
    ):
        validate_config({"seed": 99999999999}, "the bench grid")
