"""Image files to model-ready tensors, fast: lookup, checks, decoding, a decoded cache, transforms.

JPEG decoding dominates an ISIC epoch, and the engine re-scores the whole pool at every query
step, so every image is first brought to one canonical form — an `image_size` square, uint8 RGB
(shorter side resized with antialiasing, then centre-cropped; JPEGs are decoded at a reduced DCT
scale when that still covers the target) — and everything after that works on uint8 tensors:

* eval: the square itself, normalised (this *is* "resize + centre crop");
* train: torchvision v2 on the uint8 tensor — random resized crop, horizontal/vertical flips,
  random 90-degree rotations (lesions have no orientation) and colour jitter — then normalised.
  Each item's random draws come from a generator seeded by the loader with (run seed, epoch,
  sample index) — `augmentation_seeds`, `seeded_augment` — never from a worker's RNG, so the
  DataLoader worker count does not change what the model sees.

The optional decoded cache (`DecodedCache`) stores the canonical squares of a file list once in a
memory-mapped `(N, 3, S, S)` uint8 file (channels first, as tensors want them) keyed by the file
list (paths and byte sizes) and `S`; later epochs and scoring passes read rows instead of
decoding. Cached and decoded paths give bit-identical eval tensors. Datasets here are picklable
(no open handles: the memmap opens lazily in each DataLoader worker).

The pieces live in `decode.py` (finding, checking, decoding files), `augment.py` (transforms and
per-item seeds), `cache.py` (the decoded cache) and `progress.py` (progress of long work); this
module holds the torch datasets, the split, the DataLoader options and the shared builder step
of the image datasets, and re-exports the pieces' public names, where callers have always
imported them from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from flexsample.engine.errors import FlexsampleError

from .augment import (
    AUGMENT_SALT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Normalize,
    RandomRot90,
    augmentation_seeds,
    seeded_augment,
    split_item,
    train_augmentation,
)
from .base import Split
from .cache import CACHE_VERSION, CacheRef, DecodedCache, cache_key, tune_allocator
from .decode import (
    DOWNSAMPLED,
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    check_image_file,
    decode_square,
    find_image,
    index_images,
    to_chw,
)
from .progress import Advance, progress_task

__all__ = [
    # this module
    "ImageItems",
    "ImageSplit",
    "ResolvedSplit",
    "dataloader_options",
    "make_image_splits",
    "resolve_files",
    # augment.py
    "AUGMENT_SALT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColorJitter",
    "Normalize",
    "RandomRot90",
    "augmentation_seeds",
    "seeded_augment",
    "split_item",
    "train_augmentation",
    # cache.py
    "CACHE_VERSION",
    "CacheRef",
    "DecodedCache",
    "cache_key",
    "tune_allocator",
    # decode.py
    "DOWNSAMPLED",
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "check_image_file",
    "decode_square",
    "find_image",
    "index_images",
    "to_chw",
    # progress.py
    "Advance",
    "progress_task",
]


# ---------------------------------------------------------------- torch datasets and the split


class ImageItems(Dataset):
    """(x, label) items of an image split: x float32 (3, S, S), normalised, augmented if train.

    Reads canonical squares from the decoded cache when given (`cache` + `rows`), otherwise
    decodes the files. Picklable: the memmap is opened lazily in whichever process reads.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        image_size: int,
        train: bool,
        cache: CacheRef | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(image_size)
        self.train = train
        self.cache = cache
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.augment = train_augmentation(self.image_size) if train else None
        self.normalize = Normalize()
        self._mm: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def _memmap(self) -> np.ndarray:
        if self._mm is None:
            assert self.cache is not None
            s = self.cache.size
            self._mm = np.memmap(
                self.cache.file, dtype=np.uint8, mode="r", shape=(self.cache.rows, 3, s, s)
            )
        return self._mm

    def square(self, i: int) -> torch.Tensor:
        """The canonical uint8 (3, S, S) square of item `i`."""
        if self.cache is not None:
            row = int(self.rows[i]) if self.rows is not None else i
            return torch.from_numpy(np.array(self._memmap()[row]))  # copy out of the memmap
        return to_chw(decode_square(self.paths[i], self.image_size))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Item `i`, or `(i, seed)`: then the augmentation draws come from `seed` alone."""
        i, seed = split_item(item)
        x = self.square(i)
        if self.augment is not None:
            x = seeded_augment(self.augment, x, seed)
        return self.normalize(x), int(self.labels[i])

    def __getitems__(self, indices: Sequence[Any]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch (DataLoader and Subset call it): cached eval reads and normalises the
        whole batch in one vectorised step instead of one item at a time."""
        if self.cache is None or self.augment is not None:
            return [self[i] for i in indices]
        idx = np.asarray([split_item(i)[0] for i in indices], dtype=np.int64)
        rows = self.rows[idx] if self.rows is not None else idx
        block = torch.from_numpy(self._memmap()[rows])  # (B, 3, S, S) uint8, one read
        x = self.normalize(block)
        return [(x[k], int(self.labels[i])) for k, i in enumerate(idx)]


class ImageSplit(Split):
    """A split backed by image files (ids = manifest names), optionally with a decoded cache."""

    def __init__(
        self,
        labels: np.ndarray,
        ids: list[str],
        paths: list[str],
        image_size: int,
        cache: CacheRef | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        super().__init__(labels, ids)
        if len(paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.cache = cache
        self.rows = rows

    def torch_dataset(self, train: bool) -> Dataset:
        return ImageItems(self.paths, self.labels, self.image_size, train, self.cache, self.rows)


def dataloader_options(
    device: str | torch.device,
    num_workers: int | None = None,
    train: bool = True,
    cached: bool = False,
) -> dict[str, Any]:
    """DataLoader keyword arguments for file-backed splits: workers, pinned memory on CUDA.

    Decoding and augmentation want worker processes (one per core, up to 8), kept between
    passes: starting them again each epoch cost about 0.9 s per epoch on a 2-core CPU, which
    halved the throughput of a curriculum's small early epochs (benchmarks/isic_scale.py).
    A cached eval pass wants no workers: reading rows is cheaper than shipping float batches
    between processes, so it runs in the main process (about 4x faster on a 2-core CPU).
    """
    cuda = torch.device(device).type == "cuda"
    if num_workers is None:
        num_workers = 0 if (cached and not train) else min(8, os.cpu_count() or 1)
    opts: dict[str, Any] = {"num_workers": num_workers, "pin_memory": cuda}
    if num_workers > 0:
        opts["persistent_workers"] = True
        opts["prefetch_factor"] = 4
    return opts


# ---------------------------------------------------------------- shared builder step


@dataclass
class ResolvedSplit:
    """One split's names, labels and resolved file paths after missing/corrupt handling."""

    names: list[str]
    labels: np.ndarray
    paths: list[str]


def _preview(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(str(n) for n in names[:k])
    return shown + (", ..." if len(names) > k else "")


def resolve_files(
    splits: dict[str, tuple[list[str], np.ndarray]],
    data_dir: Path,
    skip_missing: bool,
    locate: Callable[[str], str | None] | None = None,
    source: str = "the splits",
    progress: Any = None,
) -> tuple[dict[str, ResolvedSplit], dict[str, Any]]:
    """Find every listed image under `data_dir`; report or skip absent and broken files.

    `locate` maps a listed name to a path or None (default: look the name up anywhere below
    `data_dir` with `find_image`). Returns the resolved splits and an info dict
    (`skipped_missing`, `skipped_corrupt`, `skipped_names`). Raises FlexsampleError (count and
    first names) unless `skip_missing`. `progress` (see `progress_task`) follows the file
    checks (two small reads per file: minutes for tens of thousands on a network disk).
    """
    if locate is None:
        index = index_images(data_dir)

        def locate(name: str) -> str | None:
            return find_image(name, index)

    missing: list[str] = []
    located: dict[str, list[str | None]] = {}
    for split_name, (names, _labels) in splits.items():
        paths = [locate(n) for n in names]
        missing.extend(n for n, p in zip(names, paths, strict=True) if p is None)
        located[split_name] = paths
    total = sum(len(v[0]) for v in splits.values())
    if missing and not skip_missing:
        raise FlexsampleError(
            f"{len(missing)} of {total} images listed in {source} are missing under {data_dir}: "
            f"{_preview(missing)} (put the images there, or pass --skip-missing to proceed "
            "without them)"
        )
    corrupt: list[str] = []
    corrupt_names: list[str] = []
    found = total - len(missing)
    step = max(1, found // 200)
    with progress_task(progress, "checking image files", found) as advance:
        done = 0
        for split_name, (names, _labels) in splits.items():
            for n, p in zip(names, located[split_name], strict=True):
                if p is None:
                    continue
                reason = check_image_file(p)
                done += 1
                if done % step == 0:
                    advance(step)
                if reason is not None:
                    if not skip_missing:
                        raise FlexsampleError(
                            f"corrupt image {p} ({reason}); replace it or pass --skip-missing"
                        )
                    corrupt.append(p)
                    corrupt_names.append(n)
        if done % step:
            advance(done % step)
    bad = set(corrupt)
    out: dict[str, ResolvedSplit] = {}
    for split_name, (names, labels) in splits.items():
        keep = [i for i, p in enumerate(located[split_name]) if p is not None and p not in bad]
        out[split_name] = ResolvedSplit(
            [names[i] for i in keep],
            np.asarray(labels, dtype=np.int64)[keep],
            [located[split_name][i] for i in keep],  # type: ignore[misc]
        )
    info = {
        "skipped_missing": len(missing),
        "skipped_corrupt": len(corrupt),
        "skipped_names": (missing + corrupt_names)[:20],
    }
    return out, info


def _drop_undecodable(
    rs: ResolvedSplit, image_size: int, split_name: str, info: dict[str, Any], progress: Any
) -> ResolvedSplit:
    """`rs` without the files `decode_square` fails on, counted in `info` (skip_missing)."""
    n = len(rs.paths)
    if n == 0:
        return rs

    def fails(path: str) -> bool:
        return check_image_file(path, decode_size=image_size) is not None

    step = max(1, n // 200)
    bad: list[int] = []
    with (
        progress_task(progress, f"decoding {split_name} images (check)", n) as advance,
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
    ):
        for i, failed in enumerate(pool.map(fails, rs.paths), 1):
            if failed:
                bad.append(i - 1)
            if i % step == 0 or i == n:
                advance(step if i % step == 0 else i % step)
    if not bad:
        return rs
    info["skipped_corrupt"] = info.get("skipped_corrupt", 0) + len(bad)
    info["skipped_names"] = (info.get("skipped_names", []) + [rs.names[i] for i in bad])[:20]
    dropped = set(bad)
    keep = np.array([i for i in range(n) if i not in dropped], dtype=np.int64)
    return ResolvedSplit([rs.names[i] for i in keep], rs.labels[keep], [rs.paths[i] for i in keep])


def make_image_splits(
    dataset: str,
    resolved: dict[str, ResolvedSplit],
    image_size: int,
    cache_dir: str | Path | None,
    skip_missing: bool,
    info: dict[str, Any],
    progress: Any = None,
) -> dict[str, ImageSplit]:
    """Build the ImageSplits, decoding into the cache first when `cache_dir` is given.

    A file that fails to decode while the cache is built is an error naming it, or is dropped
    (and counted in `info['skipped_corrupt']`) under `skip_missing`. Without a cache,
    `skip_missing` decodes every file once here, as training will, and drops the ones that
    fail, so no DataLoader worker meets an undecodable file later; without `skip_missing` such
    a file (a JPEG with valid markers and a garbage body passes the cheap check) ends training
    with one line naming it. `progress` (see `progress_task`) follows each split's decoding.
    """
    out: dict[str, ImageSplit] = {}
    cache = DecodedCache(cache_dir) if cache_dir is not None else None
    cache_files: dict[str, str] = {}
    for split_name, rs in resolved.items():
        if cache is None:
            if skip_missing:  # drop here what a DataLoader worker would fail to decode
                rs = _drop_undecodable(rs, image_size, split_name, info, progress)
            out[split_name] = ImageSplit(rs.labels, rs.names, rs.paths, image_size)
            continue
        ref, bad = cache.build(f"{dataset}-{split_name}", rs.paths, image_size, progress=progress)
        cache_files[split_name] = ref.file
        if bad and not skip_missing:
            first = min(bad)
            raise FlexsampleError(
                f"{bad[first]} ({len(bad)} undecodable image(s) in the {split_name} split; "
                "replace them or pass --skip-missing)"
            )
        keep = np.array([i for i in range(len(rs.paths)) if i not in bad], dtype=np.int64)
        if bad:
            info["skipped_corrupt"] = info.get("skipped_corrupt", 0) + len(bad)
            info.setdefault("skipped_names", []).extend(rs.names[i] for i in sorted(bad))
            info["skipped_names"] = info["skipped_names"][:20]
        out[split_name] = ImageSplit(
            rs.labels[keep],
            [rs.names[i] for i in keep],
            [rs.paths[i] for i in keep],
            image_size,
            cache=ref,
            rows=keep,
        )
    info["cache_files"] = cache_files or None
    return out
