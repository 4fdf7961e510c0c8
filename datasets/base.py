"""What a dataset hands to training and the CLI: three splits, class names, groups.

Datasets are builders registered in `DATASETS`; each takes keyword options (only the ones it
declares are passed: `imbalance_ratio`, `data_seed`, `data_dir`, `splits_dir`, `image_size`,
`skip_missing`, ...) and returns an `LTDataset`. A builder raises `FlexsampleError` for any
bad input, naming the file or value.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from flexsample.engine.errors import FlexsampleError
from flexsample.engine.options import opt
from flexsample.engine.registry import DATASETS as _DATASETS
from flexsample.engine.registry import Registry


class Split:
    """One split: labels, stable ids, and a way to get model-ready tensors.

    `in_memory` (N, C, H, W) float tensor, when set, is the whole split already transformed
    (tiny datasets); then the trainer slices batches directly. Otherwise `torch_dataset`
    returns a map-style dataset of (x, label) with the train- or eval-time transform.
    """

    def __init__(
        self,
        labels: np.ndarray,
        ids: list[str],
        in_memory: torch.Tensor | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids)
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")
        if in_memory is not None and len(in_memory) != len(self.labels):
            raise ValueError("in_memory tensor and labels differ in length")
        self.in_memory = in_memory

    def __len__(self) -> int:
        return len(self.labels)

    def torch_dataset(self, train: bool) -> Dataset:
        if self.in_memory is None:
            raise NotImplementedError("file-backed splits implement torch_dataset")
        return _TensorItems(self.in_memory, self.labels)


class _TensorItems(Dataset):
    def __init__(self, x: torch.Tensor, labels: np.ndarray) -> None:
        self.x = x
        self.y = torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


@dataclass
class LTDataset:
    """A long-tailed classification dataset with balanced (or documented) val/test splits."""

    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    in_chans: int
    image_size: int
    # label -> group name ("head" / "medium" / "tail"); None = rank by training count in thirds
    groups: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    def split_hash(self) -> str:
        """A short hash of the three id lists and labels: identifies the split in config.json."""
        h = hashlib.sha256()
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            h.update(name.encode())
            h.update("\n".join(split.ids).encode())
            h.update(split.labels.tobytes())
        return h.hexdigest()[:16]

    def group_of_labels(self) -> list[str]:
        if self.groups is not None:
            return list(self.groups)
        return groups_by_count(self.train_counts())


def groups_by_count(counts: np.ndarray) -> list[str]:
    """Classes ranked by training count (ties by label), cut in thirds: head, medium, tail."""
    c = len(counts)
    order = np.lexsort((np.arange(c), -np.asarray(counts)))
    bounds = [round(c / 3), round(2 * c / 3)]
    out = [""] * c
    for rank, label in enumerate(order):
        out[int(label)] = "head" if rank < bounds[0] else "medium" if rank < bounds[1] else "tail"
    return out


def exponential_profile(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """n_i = max(1, floor(n_max * ratio^(-i/(C-1)))) for rank i = 0..C-1."""
    if ratio < 1:
        raise FlexsampleError(f"--imbalance-ratio must be >= 1, got {ratio}")
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    i = np.arange(num_classes)
    n = np.floor(n_max * np.power(float(ratio), -i / (num_classes - 1)) + 1e-9)
    return np.maximum(1, n).astype(np.int64)


DATASETS: Registry[LTDataset] = _DATASETS  # declared in engine.registry, with every kind

# option types the built-in datasets share: one declaration of each range and help text
ImbalanceRatio = Annotated[
    float,
    opt(
        "imbalance ratio r = n_max / n_min (ISIC: the official split 100, 200 or 500)",
        ge=1,
        le=1_000_000,
    ),
]
DataSeed = Annotated[int, opt("seed of the data split (not of training)", ge=0, le=2**32 - 1)]
ImageSize = Annotated[int | None, opt("input resolution (default: the dataset's)", ge=4, le=4096)]
DataDir = Annotated[str | None, opt("folder holding the dataset's images", path="folder")]
SplitsDir = Annotated[
    str | None, opt("folder holding split manifests (default: data dir)", path="folder")
]
SkipMissing = Annotated[bool, opt("skip images listed but absent or unreadable")]


def build_dataset(
    name: str, /, options: Mapping[str, Any] | None = None, **runtime: Any
) -> LTDataset:
    """Build a registered dataset with its options (checked; given as a mapping or as
    keywords) and the run-time arguments (`progress`, `cache_dir`) its builder takes.

    An `image_size` the builder does not declare would otherwise be one "no option" line;
    it gets the longer explanation of what to use instead.
    """
    # keywords that are not run-time arguments are options too (examples pass them so),
    # checked like the rest; None means "the dataset's default"
    extra = {k: runtime.pop(k) for k in list(runtime) if k not in DATASETS.runtime}
    options = {k: v for k, v in {**dict(options or {}), **extra}.items() if v is not None}
    if (
        options.get("image_size") is not None
        and "image_size" not in DATASETS.options(name).model_fields
    ):
        raise FlexsampleError(
            f"dataset '{name}' has a fixed image size and does not take --image-size; drop it, "
            "or use synthetic-lt or an image folder (--dataset imagefolder) for other sizes"
        )
    factory = DATASETS.get(name)
    taken = {k: v for k, v in runtime.items() if _takes(factory, k)}
    return DATASETS.build(name, options, **taken)


def _takes(factory: Any, param: str) -> bool:
    """Whether a dataset builder takes the run-time argument `param` (progress, cache_dir)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return param in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
