"""Shared fixtures: an in-process CLI runner and tiny run settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flexsample.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# a run that exercises every stage in about a second
TINY = ["--rounds", "3", "--epochs-per-round", "2", "--quiet", "--device", "cpu"]


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished default-estimator run, shared by read-only tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = Cli()("run", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    return out
