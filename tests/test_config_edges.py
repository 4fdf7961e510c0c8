"""Edges of the configuration and the run folder: duplicate keys, `~`, bad `out=` values."""

from __future__ import annotations

import pytest

import flexsample
from flexsample.engine.errors import FlexsampleError

from .conftest import one_error_line


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("c.json", '{"seed": 1, "rounds": 2, "seed": 3}', "key 'seed' appears twice"),
        (
            "c.yaml",
            "seed: 1\nrounds: 2\nseed: 3\n",
            "key 'seed' appears twice (the second on line 3)",
        ),
        (
            "n.yaml",
            "policy: adaptive\npolicy_options:\n  patience: 2\n  patience: 4\n",
            "key 'patience' appears twice",
        ),
        ("c.toml", "seed = 1\nseed = 3\n", "is not valid TOML"),
    ],
)
def test_a_key_given_twice_is_refused_in_every_format(cli, tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    line = one_error_line(cli("run", "--config", path, "--print-config"))
    assert where in line and str(path) in line


def test_out_expands_the_home_folder(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    res = cli(
        "run",
        "--rounds",
        "1",
        "--epochs-per-round",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--estimator",
        "random",
        "--out",
        "~/runs/x",
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "x" / "results.json").is_file()
    assert not (tmp_path / "~").exists()


def test_python_api_bad_out_is_one_flexsample_error(tmp_path):
    with pytest.raises(FlexsampleError, match="--out must be a folder path .* not int"):
        flexsample.run(out=5)
    with pytest.raises(FlexsampleError, match="longer than the file system allows"):
        flexsample.run(out=tmp_path / ("x" * 300))
    with pytest.raises(FlexsampleError, match="--out must be a folder path"):
        flexsample.bench(out=3.5)
    assert list(tmp_path.iterdir()) == []
