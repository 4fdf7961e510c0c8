"""Results do not depend on the DataLoader worker count (issue 8).

Train-time augmentation of file-backed splits is seeded per sample and epoch, never per worker
process, and data loading leaves the main process's RNG (dropout) alone; so `--workers 0`, `1`
and `2` train on the same tensors, select the same samples and report the same test metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexsample.datasets import build_dataset
from flexsample.datasets.images import ImageSplit, augmentation_seeds
from flexsample.training.data import SplitLoader

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synthetic():
    return build_dataset("synthetic-lt", profile="exponential", num_classes=3, image_size=8)


def _pass(split, train: bool, workers: int, order: np.ndarray, key=None, batch: int = 7):
    loader = SplitLoader(split, train, CPU, workers)
    xs, ys = zip(*loader(order, batch, key), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_augmentation_seeds_are_a_pure_function_of_key_index_and_repeat() -> None:
    idx = np.array([5, 3, 5, 9, 5])
    a = augmentation_seeds((0, 1), idx)
    assert a.dtype == np.int64 and (a >= 0).all()
    assert np.array_equal(a, augmentation_seeds((0, 1), idx))
    # the same index repeated in one pass (over-sampling) gets a fresh draw each time
    assert len({a[0], a[2], a[4]}) == 3
    # its first occurrence keeps its seed wherever it sits in the order
    assert augmentation_seeds((0, 1), np.array([9, 5]))[1] == a[0]
    assert not np.array_equal(a, augmentation_seeds((0, 2), idx))  # next epoch
    assert not np.array_equal(a, augmentation_seeds((1, 1), idx))  # other run seed


def test_training_batches_do_not_depend_on_workers(synthetic) -> None:
    order = np.random.default_rng(0).permutation(len(synthetic.train))[:40]
    x0, y0 = _pass(synthetic.train, True, 0, order, (0, 3))
    for workers in (1, 2):
        x, y = _pass(synthetic.train, True, workers, order, (0, 3))
        assert torch.equal(y, y0)
        assert torch.equal(x, x0), f"--workers {workers} augments differently from --workers 0"
    # the batch size does not matter either, and another epoch draws other augmentations
    assert torch.equal(_pass(synthetic.train, True, 0, order, (0, 3), batch=40)[0], x0)
    assert not torch.equal(_pass(synthetic.train, True, 0, order, (0, 4))[0], x0)


def test_data_loading_leaves_the_global_rng_alone(synthetic) -> None:
    """Dropout draws from the main process's generator: loading must not advance it."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _pass(synthetic.train, True, 0, np.arange(20), (0, 0))
    _pass(synthetic.val, False, 0, np.arange(20))
    assert torch.equal(torch.get_rng_state(), before)


def test_evaluation_batches_do_not_depend_on_workers(synthetic) -> None:
    order = np.arange(len(synthetic.val))
    x0, _ = _pass(synthetic.val, False, 0, order)
    assert torch.equal(_pass(synthetic.val, False, 2, order)[0], x0)


def test_image_file_augmentation_does_not_depend_on_workers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    split = ImageSplit(np.arange(12) % 3, [f"img{i}" for i in range(12)], paths, 16)
    order = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])
    x0, _ = _pass(split, True, 0, order, (7, 0), batch=5)
    assert torch.equal(_pass(split, True, 2, order, (7, 0), batch=5)[0], x0)
    assert not torch.equal(x0[1], x0[3])  # index 1 twice in one pass: two different draws


def _run(cli, out: Path, workers: int) -> None:
    res = cli(
        "run",
        "--dataset",
        "synthetic-lt",
        "--num-classes",
        "3",
        "--image-size",
        "8",
        "--rounds",
        "3",
        "--epochs-per-round",
        "1",
        "--mc-samples",
        "4",
        "--batch-size",
        "128",
        "--quiet",
        "--device",
        "cpu",
        "--workers",
        workers,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output


def test_synthetic_run_is_identical_for_0_1_2_workers(cli, tmp_path: Path) -> None:
    for workers in (0, 1, 2):
        _run(cli, tmp_path / f"w{workers}", workers)
    ref_sel = np.load(tmp_path / "w0" / "selection.npz")
    ref = json.loads((tmp_path / "w0" / "results.json").read_text())
    assert len(set(ref_sel["step"].tolist())) == 3  # anchors and two queries (the first one scored)
    for workers in (1, 2):
        sel = np.load(tmp_path / f"w{workers}" / "selection.npz")
        res = json.loads((tmp_path / f"w{workers}" / "results.json").read_text())
        for key in ("index", "step"):
            assert np.array_equal(sel[key], ref_sel[key]), f"--workers {workers}: {key} differs"
        assert res["test"] == ref["test"], f"--workers {workers}: test metrics differ"
        assert res["test_last"] == ref["test_last"]
        assert res["best_val_balanced_accuracy"] == ref["best_val_balanced_accuracy"]
