"""Class names, groups and class-count profiles of the ISIC long-tailed splits.

These are facts about the published splits (the shared isic-splits README), kept as numbers so
that `synthetic-lt` can mimic them and the split generator can reproduce them without the
manifest files, which the project never bundles.

8-class (ISIC 2019) groups, as the field reports them on these splits: head = labels 0-1,
medium = 2-4, tail = 5-7.

14-class (ISIC archive) groups follow a rule by *training* count, chosen because the class
sizes fall into three clear bands: head = at least 1000 training images, medium = 100 to 999,
tail = fewer than 100. On the official split this gives head = labels 0-3, medium = 4-9,
tail = 10-13 (4 / 6 / 4 classes).
"""

from __future__ import annotations

import re

import numpy as np

from flexsample.engine.errors import FlexsampleError

# Manifest label order (by frequency in ISIC 2019): label -> ground-truth CSV column code.
ISIC2019_CODES = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
ISIC2019_DIAGNOSES = [
    "melanocytic nevus",
    "melanoma",
    "basal cell carcinoma",
    "benign keratosis",
    "actinic keratosis",
    "squamous cell carcinoma",
    "vascular lesion",
    "dermatofibroma",
]
ISIC2019_GROUPS = ["head", "head", "medium", "medium", "medium", "tail", "tail", "tail"]
ISIC2019_ALL_COUNTS = [12875, 4522, 3323, 2624, 867, 628, 253, 239]

# The official training counts: the shared README explains why the table, not the rounded
# formula, is the truth for these three ratios.
ISIC2019_OFFICIAL_TRAIN = {
    100: [5000, 2590, 1342, 695, 360, 187, 97, 51],
    200: [5000, 2346, 1101, 517, 243, 114, 54, 25],
    500: [5000, 2058, 847, 349, 144, 60, 25, 11],
}
ISIC2019_VAL_PER_CLASS = 50
ISIC2019_TEST_PER_CLASS = 100

ISIC14_CLASS_NAMES = [
    "nevus",
    "melanoma",
    "basal cell carcinoma",
    "seborrheic keratosis",
    "actinic keratosis",
    "squamous cell carcinoma",
    "pigmented benign keratosis",
    "solar lentigo",
    "vascular lesion",
    "dermatofibroma",
    "lichenoid keratosis",
    "lentigo simplex",
    "angioma",
    "atypical melanocytic proliferation",
]
ISIC14_TRAIN = [9012, 3165, 2375, 1024, 608, 459, 268, 189, 177, 172, 22, 18, 10, 9]
ISIC14_VAL = [1288, 452, 339, 147, 87, 65, 39, 27, 25, 24, 3, 3, 2, 2]
ISIC14_TEST = [2575, 905, 679, 293, 174, 132, 77, 54, 51, 50, 7, 6, 3, 3]
ISIC14_HEAD_MIN = 1000
ISIC14_MEDIUM_MIN = 100


def isic14_groups(train_counts: np.ndarray | list[int]) -> list[str]:
    """The 14-class group rule (module docstring) applied to actual training counts."""
    return [
        "head" if n >= ISIC14_HEAD_MIN else "medium" if n >= ISIC14_MEDIUM_MIN else "tail"
        for n in train_counts
    ]


def ratio_tag(ratio: float) -> str:
    """The file-name tag of a ratio: 100 -> '100', 37.5 -> '37.5' (train_<tag>.npy)."""
    r = float(ratio)
    return str(int(r)) if r.is_integer() else repr(r)


def isic2019_train_counts(ratio: float) -> list[int]:
    """Training counts per label: the official table for 100/200/500, else round(5000 R^(-i/7))."""
    r = float(ratio)
    if r < 1 or not np.isfinite(r):
        raise FlexsampleError(f"--imbalance-ratio must be a finite number >= 1, got {ratio}")
    if r.is_integer() and int(r) in ISIC2019_OFFICIAL_TRAIN:
        return list(ISIC2019_OFFICIAL_TRAIN[int(r)])
    i = np.arange(8)
    # round half up, not to even, so that the formula is what a reader computes by hand
    return [max(1, int(np.floor(5000 * r ** (-k / 7) + 0.5))) for k in i]


def exponential_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """n_i = max(1, floor(n_max * R^(-i/(C-1)))), the profile `digits-lt` uses too."""
    from .base import exponential_profile

    return exponential_profile(n_max, num_classes, ratio).tolist()


_EXP = re.compile(r"^exponential(?:-r?(?P<r>[0-9]+(?:\.[0-9]+)?))?$")

PROFILE_NAMES = [
    "isic2019",
    "isic2019-r100",
    "isic2019-r200",
    "isic2019-r500",
    "isic14",
    "exponential",
    "exponential-r<R>",
]


def parse_profile(profile: str | None, imbalance_ratio: float) -> tuple[str, float | None]:
    """Normalise a profile name to (kind, ratio): kind in isic2019 / isic14 / exponential."""
    name = (profile or "exponential").strip().lower()
    if name == "isic14":
        return "isic14", None
    if name == "isic2019":
        return "isic2019", float(imbalance_ratio)
    m = re.fullmatch(r"isic2019-r([0-9]+(?:\.[0-9]+)?)", name)
    if m:
        return "isic2019", float(m.group(1))
    m = _EXP.fullmatch(name)
    if m:
        return "exponential", float(m.group("r")) if m.group("r") else float(imbalance_ratio)
    raise FlexsampleError(f"unknown --profile '{profile}'; available: {', '.join(PROFILE_NAMES)}")
