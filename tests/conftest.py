"""Shared fixtures: an in-process CLI runner and tiny run settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from flexsample.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# a run that exercises every stage in about a second
TINY = ["--rounds", "3", "--epochs-per-round", "2", "--quiet", "--device", "cpu"]


def one_error_line(res) -> str:
    """A CLI result that failed with exit 2 and exactly one stderr line (no traceback)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    return lines[0]


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def one_torch_thread():
    """Tiny bench cells run fastest on one thread (and do not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished default-estimator run, shared by read-only tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = Cli()("run", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def pytest_collection_modifyitems(config, items) -> None:
    """`@pytest.mark.needs("ray", ...)`: skip where an optional extra is not installed (CI
    installs them all, so there these tests run)."""
    for item in items:
        for mark in item.iter_markers("needs"):
            missing = [m for m in mark.args if importlib.util.find_spec(m) is None]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"optional package(s) {missing} absent"))


def record_reads(trainer: Any) -> list[np.ndarray]:
    """Every batch of dataset indices the trainer reads, in order (wraps its train loader)."""
    reads: list[np.ndarray] = []
    inner = trainer.train_batches

    def recording(indices, batch_size, key=None, seeds=None):
        done = 0
        for x, y in inner(indices, batch_size, key, seeds):
            reads.append(np.asarray(indices[done : done + len(y)]))
            done += len(y)
            yield x, y

    trainer.train_batches = recording  # type: ignore[assignment]
    return reads
