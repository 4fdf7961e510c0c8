"""The decoded cache: a file list's canonical squares decoded once into a memory-mapped file.

`DecodedCache` stores the squares in an `(N, 3, S, S)` uint8 memmap (channels first) keyed
by the file list (paths and byte sizes) and `S`; later epochs and scoring passes read rows
instead of decoding, bit-identical to decoding. `tune_allocator` lets glibc reuse the large
freed blocks that batches read from it leave behind. Split out of `images.py`; builds on
`decode.py` and `progress.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.errors import FlexsampleError

from .decode import decode_square
from .progress import Advance, progress_task

CACHE_VERSION = 2


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
                ok = (
                    meta.get("version") == CACHE_VERSION
                    and meta.get("rows") == len(paths)
                    and meta.get("size") == size
                    and data_file.stat().st_size == len(paths) * size * size * 3
                )
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
        meta = {
            "version": CACHE_VERSION,
            "rows": n,
            "size": size,
            "bad": bad,
            "first_file": paths[0] if n else None,
        }
        tmp_meta = meta_file.with_name(f"{meta_file.name}.tmp-{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_file)
        return CacheRef(str(data_file), n, size), bad


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
    return bool(
        mallopt(m_trim_threshold, int(trim_threshold)) == 1
        and mallopt(m_mmap_threshold, int(mmap_threshold)) == 1
    )
