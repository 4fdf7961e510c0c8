"""Anchor counts, prototype / random anchors, and the anchor feature sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import flexsample.datasets  # noqa: F401  (registers digits-lt)
from flexsample.datasets.base import build_dataset
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.registries import get_anchors, list_anchors
from flexsample.policies.anchors import anchor_counts
from flexsample.training.anchor_features import anchor_features, resolve_feature_source
from flexsample.training.models import create_model
from flexsample.training.ssl import init_from_ssl, ssl_cache_path


def test_count_rule_isic_splits() -> None:
    # r = 5000/51 ~ 98, r*s ~ 9.8 -> every class keeps up to n_min * r * s = 0.1 * 5000 = 500
    r100 = anchor_counts(np.array([5000, 2590, 1342, 695, 360, 187, 97, 51]), 0.1)
    assert r100.tolist() == [500, 500, 500, 500, 360, 187, 97, 51]
    r500 = anchor_counts(np.array([5000, 2058, 847, 349, 144, 60, 25, 11]), 0.1)
    assert r500.tolist() == [500, 500, 500, 349, 144, 60, 25, 11]


def test_count_rule_by_hand() -> None:
    # r = 10, s = 0.2 -> ratio 2: n_min * 2 = 20
    assert anchor_counts(np.array([100, 30, 10]), 0.2).tolist() == [20, 20, 10]
    # the floor m = 2 applies, but never above what a class has
    assert anchor_counts(np.array([1000, 1]), 0.001).tolist() == [2, 1]
    assert anchor_counts(np.array([1000, 5]), 0.001, floor=3).tolist() == [3, 3]
    # s = 1 keeps the whole split
    assert anchor_counts(np.array([7, 3, 1]), 1.0).tolist() == [7, 3, 1]
    for bad in (0.0, 1.5):
        with pytest.raises(FlexsampleError):
            anchor_counts(np.array([5, 1]), bad)


def toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), [60, 12, 4])
    feats = rng.normal(size=(len(labels), 5)) + 3 * np.eye(5)[labels]
    return labels, feats.astype(np.float32)


def test_prototype_picks_nearest_to_prototype() -> None:
    labels, feats = toy()
    chosen = get_anchors("prototype", anchor_scaling=0.5).select(labels, 3, seed=0, features=feats)
    k = anchor_counts(np.bincount(labels), 0.5)
    assert np.bincount(labels[chosen]).tolist() == k.tolist() == [30, 12, 4]
    for c in range(3):
        members = np.flatnonzero(labels == c)
        f = feats[members] / np.linalg.norm(feats[members], axis=1, keepdims=True)
        proto = f.mean(0)
        cos = f @ proto / np.linalg.norm(proto)
        expected = members[np.argsort(-cos, kind="stable")[: k[c]]]
        assert set(chosen[labels[chosen] == c]) == set(expected)
    # a far-away outlier in class 0 is never an anchor
    feats[0] = -100 * np.eye(5)[1]
    chosen = get_anchors("prototype", anchor_scaling=0.5).select(labels, 3, 0, feats)
    assert 0 not in chosen
    with pytest.raises(FlexsampleError):
        get_anchors("prototype").select(labels, 3, 0, None)


def test_random_anchors_same_count_rule_and_seeded() -> None:
    labels, _ = toy()
    anchors = get_anchors("random", anchor_scaling=0.1, anchor_floor=2)
    a = anchors.select(labels, 3, seed=1)
    assert np.bincount(labels[a]).tolist() == anchor_counts(np.bincount(labels), 0.1).tolist()
    assert np.array_equal(a, anchors.select(labels, 3, seed=1))
    assert not np.array_equal(a, anchors.select(labels, 3, seed=2))
    assert {"prototype", "random"} <= set(list_anchors())
    assert get_anchors("prototype").needs_features and not anchors.needs_features


def test_feature_source_resolution() -> None:
    assert resolve_feature_source("auto", 8, None) == "pixels"
    assert resolve_feature_source("auto", 32, "w.pt") == "pixels"
    assert resolve_feature_source("auto", 224, "w.pt") == "pretrained"
    assert resolve_feature_source("auto", 224, None) == "ssl"
    with pytest.raises(FlexsampleError):
        resolve_feature_source("clip", 8, None)


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits-lt")


def small_cnn():
    return create_model("small-cnn", 10, 1)


def test_pixel_and_pretrained_features(digits, tmp_path: Path) -> None:
    f = anchor_features("auto", digits, small_cnn)
    assert f.shape == (len(digits.train), 64) and f.dtype == np.float32
    assert np.allclose(f.mean(0), 0, atol=1e-4)
    with pytest.raises(FlexsampleError):
        anchor_features("pretrained", digits, small_cnn)
    weights = tmp_path / "w.pt"
    torch.manual_seed(3)
    torch.save(small_cnn().state_dict(), weights)

    def pretrained_cnn():
        return create_model("small-cnn", 10, 1, pretrained=str(weights))

    g = anchor_features("pretrained", digits, pretrained_cnn, pretrained=str(weights))
    model = pretrained_cnn().eval()
    with torch.no_grad():
        ref = model.embed(digits.train.in_memory).numpy()
    assert np.allclose(g, ref, atol=1e-5)


@pytest.mark.needs("lightly")
def test_ssl_features_one_epoch_cached_and_init(digits, tmp_path: Path) -> None:
    opts = {"seed": 0, "cache_dir": tmp_path, "ssl_epochs": 1, "backbone": "small-cnn"}
    f = anchor_features("ssl", digits, small_cnn, **opts)
    assert f.shape == (len(digits.train), 128) and np.isfinite(f).all()
    # default method mocov2; default batch size on a CPU at 8 px: the 256 cap
    path = ssl_cache_path(
        tmp_path, digits.name, digits.split_hash(), 8, "small-cnn", 0, 1, None, "mocov2", 256
    )
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    again = anchor_features("ssl", digits, small_cnn, **opts)  # read from the cache
    assert path.stat().st_mtime_ns == stamp and np.array_equal(f, again)
    model = init_from_ssl(
        small_cnn(),
        digits,
        small_cnn,
        backbone="small-cnn",
        seed=0,
        ssl_epochs=1,
        cache_dir=tmp_path,
    )
    saved = torch.load(path, weights_only=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert not any(k.startswith("head.") for k in saved)
    chosen = get_anchors("prototype").select(digits.train.labels, 10, 0, f)
    counts = anchor_counts(digits.train_counts(), 0.1)
    assert np.bincount(digits.train.labels[chosen], minlength=10).tolist() == counts.tolist()
