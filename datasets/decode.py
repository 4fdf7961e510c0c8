"""Image files found, checked and decoded to the canonical square every later step works on.

Lookup of images below a folder by stem (`index_images`, `find_image`), a cheap structural
check of each file before training starts (`check_image_file`), and the decode to an
`image_size` x `image_size` uint8 RGB square (shorter side resized, centre-cropped; JPEGs
decoded at a reduced DCT scale) plus its conversion to a CHW tensor. Split out of `images.py`:
both the decoded cache and the uncached items decode through here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from flexsample.engine.errors import FlexsampleError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DOWNSAMPLED = "_downsampled"


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


def to_chw(hwc: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> contiguous CHW uint8 tensor (copies out of a memmap)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(hwc), -1, 0)))
