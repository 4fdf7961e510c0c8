"""ISIC datasets: `isic2019` (8 classes, r = 100 / 200 / 500 or generated) and `isic-archive14`.

Labels and splits come from the manifest files (see ../shared/isic-splits/README.md for their
format): `dic.npy` (image name -> label, read with the restricted unpickler of `safe_load`) and
name arrays (`train_<R>.npy`, `val_<R>.npy`, `test_<R>.npy` for 8 classes; `train.npy`,
`val.npy`, `test.npy` for 14). `--splits-dir` holds them (default: the data dir); a folder with
an `8-class/` or `14-class/` sub-folder, like the shared copy, works as well. Images are found
by name anywhere below `--data-dir` (official `ISIC_2019_Training_Input/`, a 384x384 `train/`
re-encoding, or the archive client's download folder), with or without extension and
`_downsampled` suffix.

Every check runs before any training: missing folders and files, names absent from `dic.npy`,
labels outside the class range, overlapping splits, classes without a training image, missing
and broken images (count and first names; `skip_missing=True` drops them and records the counts
in `info`). Groups: 8-class head = labels 0-1, medium = 2-4, tail = 5-7; 14-class by training
count (head >= 1000, medium 100-999, tail < 100; see `profiles`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.errors import FlexsampleError

from .base import DATASETS, DataDir, ImageSize, ImbalanceRatio, LTDataset, SkipMissing, SplitsDir
from .images import _preview, find_image, index_images, make_image_splits, resolve_files
from .profiles import (
    ISIC14_CLASS_NAMES,
    ISIC2019_CODES,
    ISIC2019_DIAGNOSES,
    ISIC2019_GROUPS,
    isic14_groups,
    ratio_tag,
)
from .safe_load import load_label_dict, load_name_array

DEFAULT_IMAGE_SIZE = 224
SPLIT_NAMES = ("train", "val", "test")


def _data_dir(data_dir: str | Path | None, dataset: str) -> Path:
    if data_dir is None:
        raise FlexsampleError(
            f"--data-dir is required for --dataset {dataset}: the folder holding the ISIC "
            "training JPEGs (e.g. ISIC_2019_Training_Input/)"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FlexsampleError(f"--data-dir not found or not a folder: {path}")
    return path


def find_manifest_dir(splits_dir: Path, subfolder: str) -> Path:
    """The folder holding dic.npy: `splits_dir` itself or its `8-class/` / `14-class/` child."""
    if not splits_dir.is_dir():
        raise FlexsampleError(f"--splits-dir not found or not a folder: {splits_dir}")
    for cand in (splits_dir, splits_dir / subfolder):
        if (cand / "dic.npy").is_file():
            return cand
    raise FlexsampleError(
        f"no dic.npy in --splits-dir {splits_dir} (nor in {splits_dir / subfolder}); point "
        "--splits-dir at your copy of the split manifests"
    )


def available_ratios(folder: Path) -> list[str]:
    """Ratio tags that have a train_<R>.npy in `folder`, sorted numerically."""
    tags = [
        m.group(1)
        for p in folder.glob("train_*.npy")
        if (m := re.fullmatch(r"train_([0-9.]+)\.npy", p.name))
    ]
    return sorted(tags, key=float)


def read_manifests(
    manifest_dir: Path, files: dict[str, str], num_classes: int
) -> tuple[dict[str, tuple[list[str], np.ndarray]], dict[str, str]]:
    """Load and validate the three name lists against dic.npy; labels per split.

    Raises FlexsampleError for a missing file, a name not in dic.npy, a label outside
    0..num_classes-1, a name listed twice, or overlapping splits.
    """
    dic_path = manifest_dir / "dic.npy"
    labels_of = load_label_dict(dic_path)
    paths = {s: manifest_dir / f for s, f in files.items()}
    for s, p in paths.items():
        if not p.is_file():
            raise FlexsampleError(f"split file not found: {p} ({s} split)")
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for s, p in paths.items():
        names = load_name_array(p)
        unknown = [n for n in names if n not in labels_of]
        if unknown:
            raise FlexsampleError(
                f"{p}: {len(unknown)} name(s) are not in {dic_path}: {_preview(unknown)}"
            )
        if len(set(names)) != len(names):
            dup = sorted(n for n, k in Counter(names).items() if k > 1)
            raise FlexsampleError(f"{p}: {len(dup)} name(s) listed twice: {_preview(dup)}")
        labels = np.array([labels_of[n] for n in names], dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(bad):
            i = int(bad[0])
            raise FlexsampleError(
                f"{dic_path}: label {labels[i]} of '{names[i]}' (listed in {p.name}) is outside "
                f"the class range 0..{num_classes - 1}"
            )
        out[s] = (names, labels)
    splits = list(out)
    for a_i, a in enumerate(splits):
        for b in splits[a_i + 1 :]:
            common = sorted(set(out[a][0]) & set(out[b][0]))
            if common:
                raise FlexsampleError(
                    f"{paths[a].name} and {paths[b].name} overlap in {len(common)} image(s): "
                    f"{_preview(common)}; train, val and test must be disjoint"
                )
    return out, {s: str(p) for s, p in paths.items()}


def check_every_class_trains(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """A class without a training image cannot be learnt or scored: refuse it by name."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        c = int(empty[0])
        raise FlexsampleError(f"class {c} ({class_names[c]}) has no training image in {where}")


def _build(
    dataset: str,
    class_names: list[str],
    subfolder: str,
    files: dict[str, str],
    data_dir: str | Path | None,
    splits_dir: str | Path | None,
    image_size: int | None,
    skip_missing: bool,
    cache_dir: str | Path | None,
    info: dict[str, Any],
    progress: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    root = _data_dir(data_dir, dataset)
    sdir = Path(splits_dir).expanduser() if splits_dir is not None else root
    manifest_dir = find_manifest_dir(sdir, subfolder)
    if "ratio" in info and not (manifest_dir / files["train"]).is_file():
        have = available_ratios(manifest_dir)
        raise FlexsampleError(
            f"split file {manifest_dir / files['train']} not found for --imbalance-ratio "
            f"{info['ratio_tag']}; ratios present in {manifest_dir}: "
            f"{', '.join(have) if have else 'none'} (make others with `flexsample splits`)"
        )
    splits, manifest_files = read_manifests(manifest_dir, files, len(class_names))
    check_every_class_trains(splits["train"][1], class_names, manifest_files["train"])
    size = int(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
    if size < 8:
        raise FlexsampleError(f"--image-size must be at least 8, got {size}")
    exclude = [cache_dir] if cache_dir is not None else []
    index = index_images(root, exclude=exclude)
    resolved, skip_info = resolve_files(
        splits,
        root,
        skip_missing,
        locate=lambda name: find_image(name, index),
        source=f"the {dataset} splits in {manifest_dir}",
        progress=progress,
    )
    info.update(skip_info)
    built = make_image_splits(dataset, resolved, size, cache_dir, skip_missing, info, progress)
    check_every_class_trains(
        built["train"].labels,
        class_names,
        f"{manifest_files['train']} after skipping missing images",
    )
    info.update(
        {
            "data_dir": str(root),
            "splits_dir": str(manifest_dir),
            "manifests": manifest_files,
            "image_size": size,
        }
    )
    return built, info


@DATASETS.register("isic2019")
def build_isic2019(
    imbalance_ratio: ImbalanceRatio = 100.0,
    data_dir: DataDir = None,
    splits_dir: SplitsDir = None,
    image_size: ImageSize = None,
    skip_missing: SkipMissing = False,
    cache_dir: str | None = None,
    progress: Any = None,
) -> LTDataset:
    """ISIC 2019, 8 classes, long-tailed train (r = 100/200/500 official), balanced val/test.

    `progress` (a reporter, see `images.progress_task`) follows file checks and cache building.
    """
    tag = ratio_tag(imbalance_ratio)
    files = {s: f"{s}_{tag}.npy" for s in SPLIT_NAMES}
    info: dict[str, Any] = {
        "ratio": float(imbalance_ratio),
        "ratio_tag": tag,
        "imbalance_ratio": float(imbalance_ratio),
        "class_descriptions": list(ISIC2019_DIAGNOSES),
    }
    built, info = _build(
        "isic2019",
        list(ISIC2019_CODES),
        "8-class",
        files,
        data_dir,
        splits_dir,
        image_size,
        skip_missing,
        cache_dir,
        info,
        progress,
    )
    del info["ratio"], info["ratio_tag"]
    return LTDataset(
        name="isic2019",
        class_names=list(ISIC2019_CODES),
        train=built["train"],
        val=built["val"],
        test=built["test"],
        in_chans=3,
        image_size=info["image_size"],
        groups=list(ISIC2019_GROUPS),
        info=info,
    )


@DATASETS.register("isic-archive14")
def build_isic_archive14(
    data_dir: DataDir = None,
    splits_dir: SplitsDir = None,
    image_size: ImageSize = None,
    skip_missing: SkipMissing = False,
    cache_dir: str | None = None,
    progress: Any = None,
) -> LTDataset:
    """ISIC archive, 14 classes, one long-tailed split (val/test keep the imbalance).

    `progress` (a reporter, see `images.progress_task`) follows file checks and cache building.
    """
    files = {s: f"{s}.npy" for s in SPLIT_NAMES}
    info: dict[str, Any] = {
        "group_rule": "head >= 1000 training images, medium 100-999, tail < 100"
    }
    built, info = _build(
        "isic-archive14",
        list(ISIC14_CLASS_NAMES),
        "14-class",
        files,
        data_dir,
        splits_dir,
        image_size,
        skip_missing,
        cache_dir,
        info,
        progress,
    )
    counts = np.bincount(built["train"].labels, minlength=len(ISIC14_CLASS_NAMES))
    return LTDataset(
        name="isic-archive14",
        class_names=list(ISIC14_CLASS_NAMES),
        train=built["train"],
        val=built["val"],
        test=built["test"],
        in_chans=3,
        image_size=info["image_size"],
        groups=isic14_groups(counts),
        info=info,
    )
