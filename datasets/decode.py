"""Image files found, checked and decoded to the canonical square every later step works on.

Lookup of images below a folder by stem (`index_images`, `find_image`), a cheap structural
check of each file before training starts (`check_image_file`), and the decode to an
`image_size` x `image_size` uint8 RGB square (shorter side resized, centre-cropped; JPEGs
decoded at a reduced DCT scale) plus its conversion to a CHW tensor. Split out of `images.py`:
both the decoded cache and the uncached items decode through here.

Whatever the decoder raises (an `OSError` for a broken stream, PIL's `DecompressionBombError`
for a 30000 x 30000 PNG, a `ValueError`, a `MemoryError`) becomes one `UnreadableImageError`
line naming the file, also when it is raised inside a DataLoader worker: torch re-raises a
worker's exception by calling its class with the worker's whole traceback, and this class keeps
only the original line from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
            d
            for d in dirnames
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


class UnreadableImageError(FlexsampleError):
    """An image file that cannot be decoded; the message is one line naming the file.

    A DataLoader worker's exception comes back to the main process as
    `type(exc)("Caught ... in DataLoader worker process N.\nOriginal Traceback ...")`; given
    such a text, the constructor keeps only the original message (the traceback's last line),
    so the run still ends with one line naming the file.
    """

    def __init__(self, message: str = "", reason: str = "") -> None:
        super().__init__(_unwrap_worker_message(str(message)))
        self.reason = reason or str(self)


def _unwrap_worker_message(text: str) -> str:
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    marker = f"{UnreadableImageError.__name__}: "
    last = text.rstrip().rsplit(marker, 1)
    return " ".join((last[1] if len(last) == 2 else text.rstrip().splitlines()[-1]).split())


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def decoder_reason(exc: BaseException) -> str:
    """What a decoder raised, as a short phrase on one line ("OSError: broken data stream")."""
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_JPEG_MAGIC = b"\xff\xd8\xff"


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


_OTHER_MAGIC = (b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def check_image_file(path: str | Path, decode_size: int | None = None) -> str | None:
    """Check one image file before training starts; the reason (one line) if it is broken.

    Cheap by default: the header and end marker, two small reads per file (a full decode only
    to confirm a file whose end marker is not where expected). Damage inside a well-formed file
    (a JPEG with valid markers and a garbage body, a decompression-bomb PNG) then surfaces when
    the file is decoded, as one `UnreadableImageError` line naming it. With `decode_size` the
    file is also decoded exactly as training will decode it (`decode_square` at that size), so
    what passes here cannot fail in a DataLoader worker. Never raises for a bad file, whatever
    the decoder raises.
    """
    reason = _structural_reason(path)
    if reason is not None or decode_size is None:
        return reason
    try:
        decode_square(path, decode_size)
    except UnreadableImageError as exc:
        return f"cannot be decoded ({exc.reason})"
    return None


def _structural_reason(path: str | Path) -> str | None:
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
    except Exception:  # noqa: BLE001 - whatever the decoder raises, the file is broken
        return False


def decode_square(path: str | Path, size: int) -> np.ndarray:
    """Decode to the canonical `size` x `size` uint8 RGB square (shorter side, centre crop).

    Raises `UnreadableImageError` (one line naming the file) whatever the decoder raises.
    """
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale: decodes 2-8x fewer pixels
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            out = im.resize(
                (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
            )
            return np.asarray(out, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one line naming the file
        reason = decoder_reason(exc)
        raise UnreadableImageError(
            f"corrupt or unreadable image {path}: {reason}", reason
        ) from None


def to_chw(hwc: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> contiguous CHW uint8 tensor (copies out of a memmap)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(hwc), -1, 0)))
