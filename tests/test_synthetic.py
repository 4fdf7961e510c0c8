"""`synthetic-lt`: profiles, determinism, laziness and learnable class structure."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flexsample.datasets import build_dataset
from flexsample.datasets.profiles import ISIC14_TRAIN, ISIC2019_OFFICIAL_TRAIN
from flexsample.engine.errors import FlexsampleError


@pytest.mark.parametrize(
    "profile, counts",
    [
        ("isic2019-r100", ISIC2019_OFFICIAL_TRAIN[100]),
        ("isic2019-r200", ISIC2019_OFFICIAL_TRAIN[200]),
        ("isic2019-r500", ISIC2019_OFFICIAL_TRAIN[500]),
        ("isic14", ISIC14_TRAIN),
    ],
)
def test_named_profiles(profile: str, counts: list[int]) -> None:
    ds = build_dataset("synthetic-lt", profile=profile, imbalance_ratio=7, data_seed=0)
    assert ds.train_counts().tolist() == counts
    assert ds.image_size == 64 and ds.in_chans == 3
    if profile.startswith("isic2019"):
        assert ds.class_names[0] == "NV"
        assert np.bincount(ds.val.labels).tolist() == [50] * 8
        assert np.bincount(ds.test.labels).tolist() == [100] * 8
        assert ds.group_of_labels() == ["head"] * 2 + ["medium"] * 3 + ["tail"] * 3
    else:
        assert ds.group_of_labels() == ["head"] * 4 + ["medium"] * 6 + ["tail"] * 4


def test_ratio_driven_profiles() -> None:
    ds = build_dataset("synthetic-lt", profile="isic2019", imbalance_ratio=200)
    assert ds.train_counts().tolist() == ISIC2019_OFFICIAL_TRAIN[200]
    ds = build_dataset("synthetic-lt", imbalance_ratio=10, num_classes=5)  # default: exponential
    assert ds.train_counts().tolist() == [500, 281, 158, 88, 50]
    assert build_dataset(
        "synthetic-lt", profile="exponential-r10", num_classes=5
    ).train_counts().tolist() == [500, 281, 158, 88, 50]
    with pytest.raises(FlexsampleError, match="unknown --profile 'isic2020'"):
        build_dataset("synthetic-lt", profile="isic2020")
    with pytest.raises(FlexsampleError, match="option 'imbalance_ratio' = 0.5.*1 <= x"):
        build_dataset("synthetic-lt", profile="isic2019", imbalance_ratio=0.5)


def test_deterministic_lazy_and_seeded() -> None:
    a = build_dataset("synthetic-lt", profile="isic2019-r100", data_seed=3, image_size=32)
    b = build_dataset("synthetic-lt", profile="isic2019-r100", data_seed=3, image_size=32)
    c = build_dataset("synthetic-lt", profile="isic2019-r100", data_seed=4, image_size=32)
    assert a.split_hash() == b.split_hash() != c.split_hash()
    ea, eb = a.train.torch_dataset(False), b.train.torch_dataset(False)
    for i in (0, 17, len(a.train) - 1):
        assert torch.equal(ea[i][0], eb[i][0])
    assert not torch.equal(ea[0][0], c.train.torch_dataset(False)[0][0])
    # nothing but labels and ids is held: 10k images of 32x32 would be 31 MB as uint8
    assert len(pickle.dumps(a.train)) < 1_000_000
    assert len(pickle.dumps(ea)) < 200_000  # what each DataLoader worker receives
    x, y = a.train.torch_dataset(True)[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == a.train.labels[5]


def test_same_items_in_dataloader_workers() -> None:
    ds = build_dataset("synthetic-lt", profile="exponential", num_classes=3, image_size=16)
    items = ds.val.torch_dataset(False)
    xs = torch.cat([x for x, _ in DataLoader(items, batch_size=16, num_workers=2)])
    assert torch.equal(xs, torch.stack([items[i][0] for i in range(len(items))]))


def test_classes_are_learnable() -> None:
    """A nearest-centroid classifier on downsampled pixels beats chance by a wide margin."""
    ds = build_dataset("synthetic-lt", profile="isic2019-r100", image_size=24, data_seed=1)
    tr, te = ds.val.torch_dataset(False), ds.test.torch_dataset(False)

    def feats(items, idx):
        x = torch.stack([items[i][0] for i in idx])
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy()

    f_tr, y_tr = feats(tr, range(len(tr))), ds.val.labels
    idx = np.arange(0, len(te), 2)
    f_te, y_te = feats(te, idx), ds.test.labels[idx]
    centroids = np.stack([f_tr[y_tr == c].mean(0) for c in range(8)])
    pred = np.argmin(((f_te[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = float((pred == y_te).mean())
    assert acc > 0.5, acc  # chance is 0.125
