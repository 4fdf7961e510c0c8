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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from flexsample.engine.errors import FlexsampleError

from .base import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
CACHE_VERSION = 2
DOWNSAMPLED = "_downsampled"
AUGMENT_SALT = 0xA06E  # keeps augmentation seeds apart from other draws keyed on the same seed

Advance = Callable[[int], None]


# ---------------------------------------------------------------- progress of long work


@contextlib.contextmanager
def progress_task(progress: Any, name: str, total: int) -> Iterator[Advance]:
    """An `advance(n)` function for a long loop, whatever the caller passed as `progress`.

    `progress` may be None (silent), a reporter (anything with `task(name, total)`, such as
    `flexsample.workflows.progress.Reporter`; it then shows a bar or plain lines), or a plain
    callable `advance(n)`. Lives here, below training/ and workflows/, so datasets and training
    code can report without importing the layers above them.
    """
    if progress is None:
        yield lambda n=1: None
    elif hasattr(progress, "task"):
        with progress.task(name, int(total)) as advance:
            yield advance
    elif callable(progress):
        yield progress
    else:
        raise TypeError(f"progress must be a reporter, a callable or None, not {progress!r}")


# ---------------------------------------------------------------- per-sample augmentation seeds

_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit mixer (SplitMix64 finaliser), element-wise on uint64."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def augmentation_seeds(key: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """One 63-bit seed per position of `indices`: a pure function of (key, index, repeat).

    `key` is e.g. (run seed, epoch); `repeat` counts earlier occurrences of the same index in
    this pass, so an over-sampled image gets a fresh draw each time it appears. The seeds do
    not depend on batch size, worker count or which process reads the item.
    """
    indices = np.asarray(indices, dtype=np.int64)
    base = np.random.SeedSequence([AUGMENT_SALT, *(int(k) & _M64 for k in key)])
    b0, b1 = (np.uint64(v) for v in base.generate_state(2, np.uint64))
    repeat = np.zeros(len(indices), dtype=np.int64)
    if len(indices):
        order = np.argsort(indices, kind="stable")
        ranked = indices[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
        repeat[order] = np.arange(len(ranked)) - run_start
    h = _splitmix64(indices.astype(np.uint64) ^ b0)
    h = _splitmix64(h ^ (repeat.astype(np.uint64) + b1))
    return (h >> np.uint64(1)).astype(np.int64)


def split_item(item: Any) -> tuple[int, int | None]:
    """A dataset item key: a plain index, or (index, augmentation seed) from a seeded sampler."""
    if isinstance(item, tuple | list):
        return int(item[0]), int(item[1])
    return int(item), None


def seeded_augment(augment: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   seed: int | None) -> torch.Tensor:
    """Apply `augment` with its random draws taken from a generator seeded by `seed`.

    torchvision's transforms draw from torch's global CPU generator; it is forked and seeded
    here, so the draws depend on the item alone (not on the worker that reads it, nor on how
    many items that worker read before) and the caller's global RNG stream is left untouched.
    Without a seed (direct indexing outside a seeded loader) the global generator is used.
    """
    if seed is None:
        return augment(x)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return augment(x)


# ---------------------------------------------------------------- finding and checking files


def _stem(name: str) -> str:
    base = os.path.basename(name)
    root, ext = os.path.splitext(base)
    return root if ext.lower() in IMAGE_EXTENSIONS else base


def index_images(root: str | Path, exclude: Sequence[str | Path] = ()) -> dict[str, str]:
    """Map image stem (file name without extension) -> path, for every image below `root`.

    Walks the whole tree (symlinks followed, hidden folders skipped), so the official
    `ISIC_2019_Training_Input/` layout, a `train/` re-encoding or a flat folder all work. When a
    stem occurs twice, the first path in sorted order wins, so the choice is reproducible.
    """
    root = Path(root)
    skip = {os.path.realpath(p) for p in exclude}
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in skip
        )
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if ext.lower() in IMAGE_EXTENSIONS and not fn.startswith("."):
                found.setdefault(stem, os.path.join(dirpath, fn))
    return found


def find_image(name: str, index: dict[str, str]) -> str | None:
    """Look up a manifest name (with or without extension, with or without `_downsampled`)."""
    stem = _stem(name)
    hit = index.get(stem)
    if hit is None:
        alt = stem[: -len(DOWNSAMPLED)] if stem.endswith(DOWNSAMPLED) else stem + DOWNSAMPLED
        hit = index.get(alt)
    return hit


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OTHER_MAGIC = (b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def check_image_file(path: str | Path) -> str | None:
    """A cheap structural check (header and end marker, no decoding); the reason if broken.

    Catches empty, truncated and non-image files before training starts at the cost of two
    small reads per file; damage inside a well-formed file surfaces when it is decoded.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if head.startswith(_JPEG_MAGIC):
        if b"\xff\xd9" in tail or _decodes(path):  # some writers append data after the marker
            return None
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_MAGIC):
        return None if b"IEND" in tail or _decodes(path) else "truncated PNG (no IEND chunk)"
    if head.startswith(_OTHER_MAGIC):
        return None
    return "not an image file (unknown header)"


def _decodes(path: str | Path) -> bool:
    """Full decode: the slow confirmation for files whose end marker is not where expected."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


# ---------------------------------------------------------------- decoding


def decode_square(path: str | Path, size: int) -> np.ndarray:
    """Decode to the canonical `size` x `size` uint8 RGB square (shorter side, centre crop).

    Raises FlexsampleError naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale: decodes 2-8x fewer pixels
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            out = im.resize((size, size), Image.Resampling.BILINEAR,
                            box=(left, top, left + side, top + side))
            return np.asarray(out, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise FlexsampleError(f"corrupt or unreadable image {path}: {exc}") from None


# ---------------------------------------------------------------- transforms


class RandomRot90(torch.nn.Module):
    """Rotate a CHW tensor by a random multiple of 90 degrees (exact, cheap on uint8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


class Normalize:
    """uint8 CHW (or NCHW) -> float32 normalised with the ImageNet statistics timm models expect."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(self.scale).sub_(self.shift)


_LUMA = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _mat3(*ms: np.ndarray) -> np.ndarray:
    """Product of 3x3 matrices by plain loops: no BLAS thread pool for 27 multiplications."""
    out = ms[0]
    for m in ms[1:]:
        out = np.einsum("ij,jk->ik", out, m)
    return out


class ColorJitter(torch.nn.Module):
    """Brightness, contrast, saturation and hue jitter as one 3x3 colour matrix on uint8 RGB.

    torchvision's ColorJitter converts to HSV for hue (about 3 ms per 224x224 image on one
    core). Brightness, contrast and saturation are affine in RGB and match torchvision to
    within one grey level; hue becomes a rotation about the grey axis in YIQ space (a close,
    smooth stand-in for the HSV shift). All four compose into one matrix and offset applied in
    a single pass (about 0.2 ms), in NumPy: element-wise NumPy never starts threads, and thread
    pools (BLAS, OpenMP) cost milliseconds per image when the cores are busy. Factors are
    drawn from the same ranges as torchvision's, from torch's generator (seeded per item by
    `seeded_augment`).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.02) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue

    @staticmethod
    def _factor(spread: float) -> float:
        return float(torch.empty(()).uniform_(1.0 - spread, 1.0 + spread)) if spread else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = self._factor(self.brightness), self._factor(self.contrast)
        s = self._factor(self.saturation)
        h = float(torch.empty(()).uniform_(-self.hue, self.hue)) if self.hue else 0.0
        sat = s * np.eye(3) + (1.0 - s) * np.outer(np.ones(3), _LUMA)
        # rotating I/Q by -2*pi*h turns hues the way torchvision's adjust_hue(h) does
        cos, sin = np.cos(2 * np.pi * h), np.sin(-2 * np.pi * h)
        rot = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        m = ((c * b) * _mat3(_YIQ2RGB, rot, _RGB2YIQ, sat)).astype(np.float32)
        flat = x.reshape(3, -1).numpy().astype(np.float32)
        grey_mean = float(np.dot(_LUMA, flat.mean(axis=1)))
        offset = np.float32((1.0 - c) * b * grey_mean + 0.5)  # contrast: towards mean grey
        out = m[:, 0:1] * flat[0]
        out += m[:, 1:2] * flat[1]
        out += m[:, 2:3] * flat[2]
        out += offset
        np.clip(out, 0.0, 255.0, out=out)
        return torch.from_numpy(out.astype(np.uint8)).reshape(x.shape)


def train_augmentation(image_size: int) -> v2.Compose:
    """Dermoscopy augmentation on uint8 tensors (runs before normalisation)."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
    ])


def to_chw(hwc: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> contiguous CHW uint8 tensor (copies out of a memmap)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(hwc), -1, 0)))


# ---------------------------------------------------------------- decoded cache


@dataclass(frozen=True)
class CacheRef:
    """Where a decoded cache lives: the memmap file, its row count and square size."""

    file: str
    rows: int
    size: int


def cache_key(paths: Sequence[str], size: int) -> str:
    """Key of a cache: file list (path and byte size of each) and the square size."""
    h = hashlib.sha256(f"flexsample-decoded-v{CACHE_VERSION}|{size}\n".encode())
    for p in paths:
        try:
            n = os.path.getsize(p)
        except OSError:
            n = -1
        h.update(f"{p}|{n}\n".encode())
    return h.hexdigest()[:20]


def _decode_into(
    file: Path, paths: Sequence[str], size: int, threads: int, advance: Advance | None = None
) -> dict[int, str]:
    """Decode every path into rows of a new raw uint8 memmap; {row: error} for failures.

    Threads suffice: PIL releases the GIL while decoding and resizing. `advance(n)` is called
    from this thread as rows complete.
    """
    n = len(paths)
    if n == 0:
        file.write_bytes(b"")
        return {}
    arr = np.memmap(file, dtype=np.uint8, mode="w+", shape=(n, 3, size, size))
    bad: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            arr[i] = decode_square(paths[i], size).transpose(2, 0, 1)
        except FlexsampleError as exc:
            bad[i] = str(exc)

    step = max(1, n // 200)  # a few hundred updates at most, whatever the file count
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, _ in enumerate(pool.map(work, range(n)), 1):
            if advance is not None and (done % step == 0 or done == n):
                advance(step if done % step == 0 else done % step)
    arr.flush()
    return bad


class DecodedCache:
    """Decode a file list once into a memory-mapped uint8 array; reuse it while the key matches."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)

    def paths_for(self, prefix: str, paths: Sequence[str], size: int) -> tuple[Path, Path]:
        key = cache_key(paths, size)
        stem = f"{prefix}-{size}px-{key}"
        return self.dir / f"{stem}.u8", self.dir / f"{stem}.json"

    def build(
        self,
        prefix: str,
        paths: Sequence[str],
        size: int,
        workers: int | None = None,
        progress: Any = None,
    ) -> tuple[CacheRef, dict[int, str]]:
        """Return the cache for `paths` (building it if needed) and {row: reason} of bad rows.

        `progress` (a reporter or `advance(n)`, see `progress_task`) follows the decoding, in
        images; a cache that is already there is returned without any progress.
        """
        data_file, meta_file = self.paths_for(prefix, paths, size)
        if meta_file.is_file() and data_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
                ok = (meta.get("version") == CACHE_VERSION and meta.get("rows") == len(paths)
                      and meta.get("size") == size
                      and data_file.stat().st_size == len(paths) * size * size * 3)
            except (OSError, ValueError):
                ok = False
            if ok:
                bad = {int(k): str(v) for k, v in meta.get("bad", {}).items()}
                return CacheRef(str(data_file), len(paths), size), bad
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexsampleError(f"cannot create cache folder {self.dir}: {exc}") from None
        tmp = data_file.with_name(f"{data_file.name}.tmp-{os.getpid()}")
        n = len(paths)
        try:
            threads = workers or min(8, os.cpu_count() or 1)
            with progress_task(progress, f"decoding {prefix} ({size} px cache)", n) as advance:
                bad = _decode_into(tmp, paths, size, threads, advance)
            os.replace(tmp, data_file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FlexsampleError(f"cannot write decoded cache {data_file}: {exc}") from None
        meta = {"version": CACHE_VERSION, "rows": n, "size": size, "bad": bad,
                "first_file": paths[0] if n else None}
        tmp_meta = meta_file.with_name(f"{meta_file.name}.tmp-{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_file)
        return CacheRef(str(data_file), n, size), bad


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
            self._mm = np.memmap(self.cache.file, dtype=np.uint8, mode="r",
                                 shape=(self.cache.rows, 3, s, s))
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

    Decoding and augmentation want worker processes (one per core, up to 8). A cached eval
    pass does not: reading rows is cheaper than shipping float batches between processes, so
    it runs in the main process (about 4x faster on a 2-core CPU, see benchmarks).
    """
    cuda = torch.device(device).type == "cuda"
    if num_workers is None:
        num_workers = 0 if (cached and not train) else min(8, os.cpu_count() or 1)
    opts: dict[str, Any] = {"num_workers": num_workers, "pin_memory": cuda}
    if num_workers > 0:
        opts["persistent_workers"] = cuda
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
    (and counted in `info['skipped_corrupt']`) under `skip_missing`. `progress` (see
    `progress_task`) follows each split's cache decoding.
    """
    out: dict[str, ImageSplit] = {}
    cache = DecodedCache(cache_dir) if cache_dir is not None else None
    cache_files: dict[str, str] = {}
    for split_name, rs in resolved.items():
        if cache is None:
            out[split_name] = ImageSplit(rs.labels, rs.names, rs.paths, image_size)
            continue
        ref, bad = cache.build(f"{dataset}-{split_name}", rs.paths, image_size,
                               progress=progress)
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
            rs.labels[keep], [rs.names[i] for i in keep], [rs.paths[i] for i in keep],
            image_size, cache=ref, rows=keep,
        )
    info["cache_files"] = cache_files or None
    return out


def tune_allocator(mmap_threshold: int = 512 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Let glibc recycle large freed blocks instead of unmapping them; True if applied.

    By default glibc serves every allocation above 32 MB with a fresh mmap, so each float batch
    of 64 images at 224 px (38 MB) page-faults all of its memory again; on a virtualised CPU that
    costs more than reading the batch from the decoded cache (benchmarks/RESULTS). Raising the
    thresholds keeps up to `trim_threshold` bytes of freed memory for reuse. Process-wide, so it
    is left to the application (the CLI) to call, once, before loading; DataLoader workers
    forked later inherit it. A no-op returning False off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, int(trim_threshold)) == 1
                and mallopt(m_mmap_threshold, int(mmap_threshold)) == 1)
