"""`flexsample run` end to end on a fake ISIC tree (real names, tiny JPEGs) and on synthetic-lt."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexsample.datasets.safe_load import (
    load_label_dict,
    load_name_array,
    save_label_dict,
    save_name_array,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "isic-splits"
needs_splits = pytest.mark.skipif(
    not all((SHARED / k / "dic.npy").is_file() for k in ("8-class", "14-class")),
    reason=f"ISIC split manifests not found at {SHARED} (shared data folder absent)",
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("flexsample.cli.app") is None,
        reason="the flexsample CLI (flexsample.cli.app) is not available",
    ),
]
SHORT = [
    "--rounds",
    "1",
    "--epochs-per-round",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--batch-size",
    "8",
]
SYNTHETIC = ["--dataset", "synthetic-lt", "--image-size", "16", *SHORT[:-2], "--batch-size", "128"]


def _invoke(*args: object):
    from typer.testing import CliRunner

    from flexsample.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def fake_tree(root: Path, kind: str, per_class: tuple[int, int, int]) -> tuple[Path, Path, Path]:
    """(data dir, splits dir, first image): the first names per class of the real split."""
    labels = load_label_dict(SHARED / kind / "dic.npy")
    c = 8 if kind == "8-class" else 14
    files = (
        {s: f"{s}_100.npy" for s in ("train", "val", "test")}
        if kind == "8-class"
        else {s: f"{s}.npy" for s in ("train", "val", "test")}
    )
    data, splits = root / "data" / "ISIC_2019_Training_Input", root / "splits"
    data.mkdir(parents=True)
    splits.mkdir()
    used: dict[str, int] = {}
    for f, k in zip(files.values(), per_class, strict=True):
        names = load_name_array(SHARED / kind / f)
        chosen = [n for y in range(c) for n in [m for m in names if labels[m] == y][:k]]
        save_name_array(splits / f, chosen)
        used.update({n: labels[n] for n in chosen})
    save_label_dict(splits / "dic.npy", used)
    rng = np.random.default_rng(0)
    for n, y in sorted(used.items()):
        arr = np.full((24, 32, 3), (23 * y) % 230, dtype=np.uint8)
        arr[4:20, 8:24] += rng.integers(0, 25, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(data / n, quality=90)
    return root / "data", splits, data / min(used)


@needs_splits
def test_isic2019_r100_runs(tmp_path: Path) -> None:
    data, splits, _ = fake_tree(tmp_path, "8-class", (6, 2, 2))
    out = tmp_path / "run"
    res = _invoke(
        "run",
        "--dataset",
        "isic2019",
        "--imbalance-ratio",
        "100",
        "--data-dir",
        data,
        "--splits-dir",
        splits,
        "--image-size",
        "32",
        *SHORT,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["class_names"] == ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
    assert set(results["test"]["group_recall"]) == {"head", "medium", "tail"}
    selection = np.load(out / "selection.npz")
    assert all(str(n).startswith("ISIC_") for n in selection["train_ids"])


@needs_splits
def test_isic_archive14_runs(tmp_path: Path) -> None:
    data, splits, _ = fake_tree(tmp_path, "14-class", (3, 1, 1))
    out = tmp_path / "run"
    res = _invoke(
        "run",
        "--dataset",
        "isic-archive14",
        "--data-dir",
        data,
        "--splits-dir",
        splits,
        "--image-size",
        "32",
        *SHORT,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["class_names"]) == 14


@needs_splits
def test_missing_images_stop_before_training(tmp_path: Path) -> None:
    data, splits, first = fake_tree(tmp_path, "8-class", (3, 1, 1))
    first.unlink()
    out = tmp_path / "run"
    res = _invoke(
        "run",
        "--dataset",
        "isic2019",
        "--data-dir",
        data,
        "--splits-dir",
        splits,
        "--image-size",
        "32",
        *SHORT,
        "--out",
        out,
    )
    assert res.exit_code == 2
    assert "1 of 40 images" in res.output and first.name in res.output
    assert not (out / "checkpoint.pt").exists()
    res = _invoke(
        "run",
        "--dataset",
        "isic2019",
        "--data-dir",
        data,
        "--splits-dir",
        splits,
        "--image-size",
        "32",
        "--skip-missing",
        *SHORT,
        "--out",
        out,
        "--overwrite",
    )
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_info"]["skipped_missing"] == 1


def test_synthetic_isic_profile_runs(tmp_path: Path) -> None:
    if "--profile" not in _invoke("run", "--help").output:
        pytest.skip("the run command has no --profile flag yet (needed for synthetic-lt profiles)")
    out = tmp_path / "run"
    res = _invoke("run", *SYNTHETIC, "--profile", "isic2019-r100", "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["class_names"] == ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_info"]["train_counts"] == [5000, 2590, 1342, 695, 360, 187, 97, 51]


def test_synthetic_default_profile_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _invoke("run", *SYNTHETIC, "--out", out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["class_names"][0] == "class_0"
