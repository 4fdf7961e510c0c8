"""The own-loop example drives the engine without training/ or the CLI."""

from __future__ import annotations

import ast
import importlib.util

import numpy as np

from .conftest import REPO

EXAMPLE = REPO / "examples" / "custom_loop.py"


def test_example_uses_only_the_engine_and_data():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(m.startswith(("flexsample.training", "flexsample.cli")) for m in imported)


def test_example_runs_and_grows_to_the_full_set():
    spec = importlib.util.spec_from_file_location("custom_loop", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(rounds=3, epochs=3, seed=0)
    sizes = [h["subset_size"] for h in out["history"]]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    pool = out["pool"]
    assert pool.is_full and set(np.unique(pool.entered)) == {0, 1, 2}
    assert 0.0 <= out["test_balanced_accuracy"] <= 1.0
