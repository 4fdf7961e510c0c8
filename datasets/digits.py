"""`digits-lt`: scikit-learn's bundled 8x8 digits made long-tailed (DESIGN.md section 3)."""

from __future__ import annotations

import numpy as np
import torch

from flexsample.engine.errors import FlexsampleError

from .base import (
    DATASETS,
    DataSeed,
    ImageSize,
    ImbalanceRatio,
    LTDataset,
    Split,
    exponential_profile,
)

TEST_PER_CLASS = 50
VAL_PER_CLASS = 20
IMAGE_SIZE = 8  # the images are kept as they are (no resizing): --image-size must be 8 or unset


@DATASETS.register("digits-lt")
def build_digits_lt(
    imbalance_ratio: ImbalanceRatio = 100.0, data_seed: DataSeed = 0, image_size: ImageSize = None
) -> LTDataset:
    """Handwritten digits (1797 real 8x8 images), 10 classes, embedded; no download."""
    from sklearn.datasets import load_digits

    if image_size is not None and int(image_size) != IMAGE_SIZE:
        raise FlexsampleError(
            f"--image-size {image_size}: digits-lt images are {IMAGE_SIZE}x{IMAGE_SIZE} and are "
            "not resized; drop --image-size, or use synthetic-lt or an image folder "
            "(--dataset imagefolder) for other sizes"
        )
    if imbalance_ratio < 1:
        raise FlexsampleError(f"--imbalance-ratio must be >= 1, got {imbalance_ratio}")
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    num_classes = 10
    rng = np.random.default_rng(data_seed)

    test_idx, val_idx, rest = [], [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[:TEST_PER_CLASS])
        val_idx.append(idx[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS])
        rest.append(idx[TEST_PER_CLASS + VAL_PER_CLASS :])
    n_max = min(len(r) for r in rest)
    head_order = rng.permutation(num_classes)  # head_order[i] = class of rank i
    counts = exponential_profile(n_max, num_classes, imbalance_ratio)
    train_idx = [None] * num_classes
    for rank, c in enumerate(head_order):
        train_idx[c] = rest[c][: counts[rank]]

    mean, std = float(images.mean()), float(images.std())

    def split(parts: list[np.ndarray]) -> Split:
        idx = np.sort(np.concatenate(parts))
        x = torch.from_numpy((images[idx] - mean) / std).unsqueeze(1).contiguous()
        return Split(labels[idx], [str(i) for i in idx], in_memory=x)

    return LTDataset(
        name="digits-lt",
        class_names=[str(c) for c in range(num_classes)],
        train=split(train_idx),
        val=split(val_idx),
        test=split(test_idx),
        in_chans=1,
        image_size=IMAGE_SIZE,
        info={"imbalance_ratio": float(imbalance_ratio), "head_order": head_order.tolist()},
    )
