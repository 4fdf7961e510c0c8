"""`--ssl-method mocov2|simclr|byol`: tiny pre-trainings, the cache key, the batch size, errors.

Each pre-training here is a few optimiser steps on a handful of 8 px digits (or 12 px image
files), so the whole file stays fast on a CPU.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flexsample.datasets  # noqa: F401  (registers the datasets)
from flexsample.datasets.base import Split, build_dataset
from flexsample.engine.errors import FlexsampleError
from flexsample.training.models import create_model
from flexsample.training.ssl import (
    OBJECTIVES,
    SSL_METHODS,
    default_ssl_batch_size,
    ssl_cache_path,
    ssl_weights,
    train_ssl,
)
from flexsample.workflows.config import RunConfig

from .conftest import one_error_line

CPU = torch.device("cpu")
pytest.importorskip("lightly", reason="the ssl extra (lightly) is not installed")


@pytest.fixture(scope="module")
def tiny():
    """digits-lt with its first 32 training images (in memory, 8 px, one channel)."""
    ds = build_dataset("digits-lt")
    ds.train = Split(ds.train.labels[:32], ds.train.ids[:32], ds.train.in_memory[:32])
    return ds


def small_cnn():
    return create_model("small-cnn", 10, 1)


def backbone_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith("features.") and v.is_floating_point()
    }


@pytest.mark.parametrize("method", SSL_METHODS)
def test_each_method_trains_and_is_cached_under_its_name(tiny, tmp_path: Path, method) -> None:
    options = dict(
        backbone="small-cnn",
        seed=0,
        ssl_epochs=2,
        cache_dir=tmp_path,
        ssl_method=method,
        ssl_batch_size=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start = backbone_of(small_cnn())  # what the factory builds under the seed
    weights = ssl_weights(tiny, small_cnn, **options)
    changed = [k for k in start if not torch.equal(start[k], weights[k])]
    assert changed == list(start)  # every backbone tensor moved
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not any(k.startswith("head.") for k in weights)
    path = ssl_cache_path(
        tmp_path, tiny.name, tiny.split_hash(), 8, "small-cnn", 0, 2, None, method, 8
    )
    assert path.is_file() and f"-{method}-b8-" in path.name
    stamp = path.stat().st_mtime_ns
    again = ssl_weights(tiny, small_cnn, **options)  # a cache hit: nothing retrained
    assert path.stat().st_mtime_ns == stamp
    assert all(torch.equal(again[k], weights[k]) for k in weights)


def test_methods_give_different_weights_and_files(tiny, tmp_path: Path) -> None:
    got = {}
    for method in SSL_METHODS:
        got[method] = ssl_weights(
            tiny,
            small_cnn,
            backbone="small-cnn",
            seed=0,
            ssl_epochs=1,
            cache_dir=tmp_path,
            ssl_method=method,
            ssl_batch_size=16,
        )
    assert len(list((tmp_path / "ssl").glob("*.pt"))) == 3
    key = "features.0.weight"
    assert not torch.equal(got["mocov2"][key], got["simclr"][key])
    assert not torch.equal(got["simclr"][key], got["byol"][key])
    # the batch size is part of the key too
    ssl_weights(
        tiny,
        small_cnn,
        backbone="small-cnn",
        seed=0,
        ssl_epochs=1,
        cache_dir=tmp_path,
        ssl_method="simclr",
        ssl_batch_size=8,
    )
    assert len(list((tmp_path / "ssl").glob("*-simclr-*.pt"))) == 2


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_loss_decreases(tiny, method) -> None:
    losses: list[float] = []
    torch.manual_seed(0)
    train_ssl(
        small_cnn(),
        tiny.train,
        epochs=6,
        seed=0,
        device=CPU,
        method=method,
        batch_size=16,
        losses=losses,
    )
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


def test_mocov2_queue_and_momentum_encoder(tiny) -> None:
    """MoCo v2 keeps min(4096, N - B) past keys as negatives and a key encoder that follows
    the query encoder by EMA (never by gradient)."""
    import lightly

    model = small_cnn()
    moco = OBJECTIVES["mocov2"](model, 128, lightly, 8, 32)
    assert tuple(moco.criterion.memory_bank.size) == (24, 128)
    assert moco.temperature == 0.2
    assert not any(p.requires_grad for p in moco.model_m.parameters())
    w = model.features[0].weight
    with torch.no_grad():
        w.add_(1.0)  # the query encoder moves by 1 everywhere
    key_before = moco.model_m.features[0].weight.clone()
    moco.after_step(0, 10)  # EMA factor m = 0.99 at the first step
    moved = moco.model_m.features[0].weight - key_before
    assert torch.allclose(moved, 0.01 * (w.detach() - key_before), atol=1e-6)


def test_simclr_loss_is_nt_xent_by_hand(tiny) -> None:
    """Two images, orthogonal embeddings, identical views, temperature 0.5: each view scores
    its partner 1 / 0.5 = 2 and two others 0, so the loss is log(1 + 2 e^-2)."""
    import lightly

    simclr = OBJECTIVES["simclr"](small_cnn(), 128, lightly, 2, 2)
    z = torch.eye(2, 4)
    assert simclr.criterion(z, z).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    # lightly's SimCLR head with our sizes: Linear(d, d), ReLU, Linear(d, 128), no BN
    layers = [type(m).__name__ for m in simclr.projector.modules()][2:]
    assert layers == ["Linear", "ReLU", "Linear"]


def test_file_backed_views_for_mocov2(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, n in {"a": 10, "b": 8}.items():
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png"
            )
    ds = build_dataset(
        "imagefolder",
        data_dir=str(tmp_path / "data"),
        image_size=12,
        imbalance_ratio=2,
        val_per_class=1,
        test_per_class=1,
    )
    assert ds.train.in_memory is None  # the v2 augmentation path, not tensor ops

    def factory():
        return create_model("small-cnn", ds.num_classes, 3)

    weights = ssl_weights(
        ds,
        factory,
        backbone="small-cnn",
        seed=1,
        ssl_epochs=1,
        ssl_method="mocov2",
        ssl_batch_size=4,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        start = factory().state_dict()["features.0.weight"]
    assert not torch.equal(weights["features.0.weight"], start)


def test_default_batch_size_fits_the_device() -> None:
    # 32 back-propagated images per step on a CPU at 224 px, 256 on a GPU
    assert default_ssl_batch_size("cpu", 224) == 32  # mocov2: one view back-propagated
    assert default_ssl_batch_size("cpu", 224, "simclr") == 16  # both views
    assert default_ssl_batch_size("cpu", 224, "byol") == 16
    assert default_ssl_batch_size("cuda", 224) == 256
    assert default_ssl_batch_size("cuda", 224, "simclr") == 128
    assert default_ssl_batch_size("cpu", 112) == 128  # same pixels per step
    assert default_ssl_batch_size("cpu", 448) == 8  # never below 8
    assert default_ssl_batch_size("cpu", 8, "byol") == 256  # tiny images: capped
    assert RunConfig().ssl_method == "mocov2" and RunConfig().ssl_batch_size is None


def test_unknown_method_and_bad_batch(tiny) -> None:
    with pytest.raises(FlexsampleError, match="unknown --ssl-method 'swav'; available: mocov2"):
        train_ssl(small_cnn(), tiny.train, epochs=1, seed=0, device=CPU, method="swav")
    with pytest.raises(FlexsampleError, match="--ssl-batch-size must be >= 2"):
        train_ssl(small_cnn(), tiny.train, epochs=1, seed=0, device=CPU, batch_size=1)


def test_cli_rejects_unknown_method_and_small_batch(cli, tmp_path: Path) -> None:
    common = ["run", "--rounds", "1", "--epochs-per-round", "1", "--quiet", "--device", "cpu"]
    line = one_error_line(cli(*common, "--ssl-method", "swav", "--out", tmp_path / "a"))
    assert "--ssl-method" in line and "'swav'" in line
    assert all(m in line for m in SSL_METHODS), line
    line = one_error_line(cli(*common, "--ssl-batch-size", "1", "--out", tmp_path / "b"))
    assert "--ssl-batch-size" in line and "2 <= x" in line


def test_missing_lightly_names_the_extra(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightly", None)  # `import lightly` now fails
    with pytest.raises(FlexsampleError) as err:
        train_ssl(small_cnn(), tiny.train, epochs=1, seed=0, device=CPU, method="byol")
    text = str(err.value)
    assert "\n" not in text
    assert "--ssl-method byol" in text and "pip install 'flexsample[ssl]'" in text
