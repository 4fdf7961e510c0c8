"""Atomic checkpoint files: write to a temporary file, fsync, then rename into place.

A crash mid-write leaves the previous file intact; `rotate=True` keeps the one before as
`<name>.prev.pt`, so a checkpoint corrupted on disk later still has a fallback.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import FlexsampleError


def save_atomic(path: str | os.PathLike, obj: Any, rotate: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if rotate and path.exists():
            os.replace(path, prev_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by `save_atomic` (tensors, arrays and plain containers)."""
    path = Path(path)
    if not path.is_file():
        raise FlexsampleError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise FlexsampleError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
