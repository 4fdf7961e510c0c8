"""`imagefolder`: any `root/<class>/<image>` tree, made long-tailed with `--imbalance-ratio`.

Classes are the sub-folders holding at least one image (sorted by name = label order). Per
class, a balanced test and val set are carved out first (by default 20% and 10% of the smallest
class, at most 100 and 50, at least 1), drawn with `--data-seed`. Training keeps an exponential
profile n_i = floor(n_max * R^(-i/(C-1))) over the classes ranked by how many images remain
(largest first, ties by name), with n_max the largest value every class can supply, so the
ratio is exact and as much data as possible is used. R = 1 gives a balanced training set.
Ids are paths relative to the root (`<class>/<file>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt

from .base import DATASETS, DataDir, DataSeed, ImageSize, ImbalanceRatio, LTDataset, SkipMissing
from .images import IMAGE_EXTENSIONS, make_image_splits, resolve_files
from .isic import check_every_class_trains

DEFAULT_IMAGE_SIZE = 224


def scan_classes(root: Path) -> dict[str, list[str]]:
    """{class folder: sorted image file names} for every sub-folder holding images."""
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f.name for f in d.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        if files:
            out[d.name] = files
    return out


def fitted_profile(available: list[int], ratio: float) -> list[int]:
    """Exponential counts over `available` (sorted descending) with the largest feasible n_max."""
    c = len(available)
    if c == 1:
        return [available[0]]
    decay = np.power(float(ratio), -np.arange(c) / (c - 1))
    n_max = int(min(np.floor(a / f + 1e-9) for a, f in zip(available, decay, strict=True)))
    n_max = max(1, min(n_max, available[0]))
    counts = np.maximum(1, np.floor(n_max * decay + 1e-9)).astype(int)
    return [int(min(n, a)) for n, a in zip(counts, available, strict=True)]


@DATASETS.register("imagefolder")
def build_imagefolder(
    data_dir: DataDir = None,
    imbalance_ratio: ImbalanceRatio = 100.0,
    data_seed: DataSeed = 0,
    image_size: ImageSize = None,
    skip_missing: SkipMissing = False,
    cache_dir: str | None = None,
    val_per_class: Annotated[
        int | None, opt("validation images per class (default: as many as fit)", ge=1)
    ] = None,
    test_per_class: Annotated[
        int | None, opt("test images per class (default: as many as fit)", ge=1)
    ] = None,
    progress: Any = None,
) -> LTDataset:
    """Any class-per-folder image tree, long-tailed train, balanced val/test per class.

    `progress` (a reporter, see `images.progress_task`) follows file checks and cache building.
    """
    if data_dir is None:
        raise FlexsampleError(
            "--data-dir is required for --dataset imagefolder: a folder with one sub-folder "
            "of images per class"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FlexsampleError(f"--data-dir not found or not a folder: {root}")
    if imbalance_ratio < 1:
        raise FlexsampleError(f"--imbalance-ratio must be >= 1, got {imbalance_ratio}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 8:
        raise FlexsampleError(f"--image-size must be at least 8, got {size}")
    classes = scan_classes(root)
    if len(classes) < 2:
        raise FlexsampleError(
            f"{root}: found {len(classes)} class folder(s) with images; need at least 2 "
            "(layout: <data-dir>/<class>/<image>)"
        )
    names = list(classes)
    smallest = min(len(v) for v in classes.values())
    n_test = test_per_class if test_per_class is not None else max(1, min(100, smallest // 5))
    n_val = val_per_class if val_per_class is not None else max(1, min(50, smallest // 10))
    if n_test < 1 or n_val < 1:
        raise FlexsampleError("val and test need at least one image per class")
    short = [c for c in names if len(classes[c]) < n_test + n_val + 1]
    if short:
        c = short[0]
        raise FlexsampleError(
            f"class folder {root / c} has {len(classes[c])} image(s); each class needs at least "
            f"{n_test + n_val + 1} (test {n_test} + val {n_val} + 1 training image)"
        )
    rng = np.random.default_rng(data_seed)
    parts: dict[str, dict[int, list[str]]] = {"train": {}, "val": {}, "test": {}}
    rest: dict[int, list[str]] = {}
    for label, c in enumerate(names):
        files = [f"{c}/{f}" for f in classes[c]]
        order = rng.permutation(len(files))
        shuffled = [files[i] for i in order]
        parts["test"][label] = shuffled[:n_test]
        parts["val"][label] = shuffled[n_test:n_test + n_val]
        rest[label] = shuffled[n_test + n_val:]
    ranked = sorted(range(len(names)), key=lambda k: (-len(rest[k]), names[k]))
    counts = fitted_profile([len(rest[k]) for k in ranked], imbalance_ratio)
    for rank, label in enumerate(ranked):
        parts["train"][label] = rest[label][: counts[rank]]
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for s, per in parts.items():
        ids = [i for label in sorted(per) for i in per[label]]
        labels = np.array([label for label in sorted(per) for _ in per[label]], dtype=np.int64)
        splits[s] = (ids, labels)
    def locate(rel: str) -> str | None:  # ids are relative paths under the root
        p = root / rel
        return str(p) if p.is_file() else None

    resolved, info = resolve_files(splits, root, skip_missing, locate=locate, source=str(root),
                                   progress=progress)
    info.update({
        "data_dir": str(root),
        "imbalance_ratio": float(imbalance_ratio),
        "head_order": [names[k] for k in ranked],
        "val_per_class": n_val,
        "test_per_class": n_test,
        "image_size": size,
    })
    built = make_image_splits("imagefolder", resolved, size, cache_dir, skip_missing, info,
                              progress)
    check_every_class_trains(built["train"].labels, names, f"{root} after skipping broken images")
    return LTDataset(
        name="imagefolder",
        class_names=names,
        train=built["train"],
        val=built["val"],
        test=built["test"],
        in_chans=3,
        image_size=size,
        groups=None,
        info=info,
    )
