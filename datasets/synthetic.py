"""`synthetic-lt`: generated RGB "lesion" images with learnable class structure, any size, no files.

For throughput benchmarks and GPU tests without downloads. Each class has its own lesion colour,
shape (size, elongation, border sharpness) and stripe texture (frequency, orientation, contrast);
every image draws a position, rotation, size and colour jitter and pixel noise on a skin-toned,
shaded background, so a classifier must use colour, shape and texture together.

Class counts come from a profile (`--profile`):

* `isic2019` (the split of `--imbalance-ratio`), `isic2019-r100`, `isic2019-r200`,
  `isic2019-r500`: the official ISIC 2019 training counts, val 50 / test 100 per class, ISIC
  class names and head/medium/tail groups;
* `isic14`: the 14-class archive counts (train / val / test as in the official split);
* `exponential` (ratio `--imbalance-ratio`) or `exponential-r<R>`: `--num-classes` classes
  (default 10), n_i = floor(500 * R^(-i/(C-1))), val 20 / test 50 per class.

Images are rendered on demand from (data seed, split, index), so a 25,000-image set costs only
its label arrays up front, and any item is the same in every process and on every run. There is
no generation phase to report: rendering happens inside the passes that read the images (SSL
pre-training, anchor features, epochs, scoring), whose progress is reported. Train-time
augmentation draws come from the loader's per-item seed (`images.seeded_augment`), so neither
rendering nor augmentation depends on the DataLoader worker count.
"""

from __future__ import annotations

import colorsys
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt

from .base import DATASETS, DataSeed, ImageSize, ImbalanceRatio, LTDataset, Split
from .images import Normalize, seeded_augment, split_item, to_chw, train_augmentation
from .profiles import (
    ISIC14_CLASS_NAMES,
    ISIC14_TEST,
    ISIC14_TRAIN,
    ISIC14_VAL,
    ISIC2019_CODES,
    ISIC2019_GROUPS,
    ISIC2019_TEST_PER_CLASS,
    ISIC2019_VAL_PER_CLASS,
    exponential_counts,
    isic14_groups,
    isic2019_train_counts,
    parse_profile,
)

DEFAULT_IMAGE_SIZE = 64
EXP_N_MAX = 500
EXP_VAL = 20
EXP_TEST = 50
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_CLASS_SALT = 0x5EED


def class_params(num_classes: int, data_seed: int) -> np.ndarray:
    """Per-class appearance as a (C, 10) float32 array (columns documented inline)."""
    rng = np.random.default_rng([data_seed, _CLASS_SALT, num_classes])
    hues = (np.arange(num_classes) / num_classes + rng.uniform(0, 1)) % 1.0
    hues = hues[rng.permutation(num_classes)]
    out = np.zeros((num_classes, 10), dtype=np.float32)
    for c in range(num_classes):
        sat = 0.35 + 0.3 * rng.uniform()
        val = 0.35 + 0.35 * rng.uniform()
        out[c, :3] = np.array(colorsys.hsv_to_rgb(float(hues[c]), sat, val)) * 255.0
        out[c, 3] = rng.uniform(0.25, 0.5)  # radius (fraction of half-size)
        out[c, 4] = rng.uniform(0.55, 1.0)  # aspect (minor / major)
        out[c, 5] = rng.uniform(4.0, 20.0)  # border sharpness
        out[c, 6] = rng.uniform(1.5, 7.0)  # stripe cycles across the lesion
        out[c, 7] = rng.uniform(0, np.pi)  # stripe orientation vs lesion axis
        out[c, 8] = rng.uniform(10.0, 45.0)  # stripe contrast
        out[c, 9] = rng.uniform(-1.0, 1.0)  # which channel the texture tints
    return out


def render(params: np.ndarray, label: int, size: int, seed: tuple[int, ...]) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`, a pure function of `seed`."""
    p = params[label]
    rng = np.random.default_rng(list(seed))
    ax = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    # background: skin tone with a per-image tint and a linear shading
    skin = np.array([205.0, 160.0, 140.0], dtype=np.float32)
    skin = skin + rng.normal(0, 12, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    shade = (xx * np.cos(theta) + yy * np.sin(theta)) * rng.uniform(5, 25)
    # lesion geometry
    cx, cy = rng.normal(0, 0.15, 2)
    rot = rng.uniform(0, np.pi)
    r = p[3] * rng.uniform(0.8, 1.2)
    u = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    v = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
    d = np.sqrt((u / r) ** 2 + (v / (r * p[4])) ** 2)
    mask = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * p[5], -30, 30)))
    # stripe texture inside the lesion, tinted towards one channel
    phase = rng.uniform(0, 2 * np.pi)
    along = u * np.cos(p[7]) + v * np.sin(p[7])
    stripes = np.sin(np.pi * p[6] / max(float(r), 1e-3) * along + phase)
    tint = np.array([1.0 + p[9], 1.0, 1.0 - p[9]], dtype=np.float32)
    colour = p[:3] + rng.normal(0, 14, 3).astype(np.float32)
    lesion = colour[None, None, :] + (p[8] * stripes)[..., None] * tint[None, None, :]
    bg = skin[None, None, :] + shade[..., None]
    img = bg * (1.0 - mask[..., None]) + lesion * mask[..., None]
    img += rng.normal(0, 8.0, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


class SyntheticItems(Dataset):
    """(x, label) items rendered on demand; x float32 (3, S, S), normalised, augmented if train."""

    def __init__(self, split: SyntheticSplit, train: bool) -> None:
        self.labels = split.labels
        self.params = split.params
        self.size = split.image_size
        self.seed = split.seed_prefix
        self.augment = train_augmentation(self.size) if train else None
        self.normalize = Normalize()

    def __len__(self) -> int:
        return len(self.labels)

    def square(self, i: int) -> torch.Tensor:
        """The uint8 (3, S, S) image of item `i` before augmentation."""
        return to_chw(render(self.params, int(self.labels[i]), self.size, (*self.seed, int(i))))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Item `i`, or `(i, seed)`: then the augmentation draws come from `seed` alone."""
        i, seed = split_item(item)
        x = self.square(i)
        if self.augment is not None:
            x = seeded_augment(self.augment, x, seed)
        return self.normalize(x), int(self.labels[i])


class SyntheticSplit(Split):
    """A generated split: only labels are stored; images render from (seed, split, index)."""

    def __init__(
        self, name: str, labels: np.ndarray, params: np.ndarray, image_size: int, data_seed: int
    ) -> None:
        super().__init__(labels, [f"synthetic-{name}-{i:06d}" for i in range(len(labels))])
        self.params = params
        self.image_size = int(image_size)
        self.seed_prefix = (int(data_seed), _SPLIT_CODE[name])

    def torch_dataset(self, train: bool) -> Dataset:
        return SyntheticItems(self, train)


def _labels(counts: list[int], rng: np.random.Generator) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return labels[rng.permutation(len(labels))]


@DATASETS.register("synthetic-lt")
def build_synthetic_lt(
    profile: Annotated[
        str | None,
        opt(
            "class counts: isic2019, isic2019-r100, isic2019-r200, isic2019-r500, isic14, "
            "exponential"
        ),
    ] = None,
    imbalance_ratio: ImbalanceRatio = 100.0,
    data_seed: DataSeed = 0,
    image_size: ImageSize = None,
    num_classes: Annotated[
        int | None, opt("number of classes (exponential profile)", ge=2, le=10_000)
    ] = None,
) -> LTDataset:
    """Generated long-tailed RGB images; counts from a profile (ISIC-like or exponential)."""
    kind, ratio = parse_profile(profile, imbalance_ratio)
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 8:
        raise FlexsampleError(f"--image-size must be at least 8, got {size}")
    if data_seed < 0:
        raise FlexsampleError(f"--data-seed must be >= 0, got {data_seed}")
    groups: list[str] | None
    info: dict[str, Any] = {"profile": kind}
    if kind == "isic2019":
        assert ratio is not None
        train = isic2019_train_counts(ratio)
        val = [ISIC2019_VAL_PER_CLASS] * 8
        test = [ISIC2019_TEST_PER_CLASS] * 8
        names, groups = list(ISIC2019_CODES), list(ISIC2019_GROUPS)
        info["imbalance_ratio"] = ratio
    elif kind == "isic14":
        train, val, test = list(ISIC14_TRAIN), list(ISIC14_VAL), list(ISIC14_TEST)
        names, groups = list(ISIC14_CLASS_NAMES), isic14_groups(ISIC14_TRAIN)
    else:
        assert ratio is not None
        c = 10 if num_classes is None else int(num_classes)
        if c < 2:
            raise FlexsampleError(f"--num-classes must be at least 2, got {num_classes}")
        train = exponential_counts(EXP_N_MAX, c, ratio)
        val, test = [EXP_VAL] * c, [EXP_TEST] * c
        names, groups = [f"class_{i}" for i in range(c)], None
        info["imbalance_ratio"] = ratio
    params = class_params(len(names), data_seed)
    rng = np.random.default_rng([data_seed, _CLASS_SALT + 1])
    info["train_counts"] = list(train)
    return LTDataset(
        name="synthetic-lt",
        class_names=names,
        train=SyntheticSplit("train", _labels(train, rng), params, size, data_seed),
        val=SyntheticSplit("val", _labels(val, rng), params, size, data_seed),
        test=SyntheticSplit("test", _labels(test, rng), params, size, data_seed),
        in_chans=3,
        image_size=size,
        groups=groups,
        info=info,
    )
