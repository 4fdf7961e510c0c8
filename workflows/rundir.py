"""The run folder as a unit: who may replace it, how it appears, who may write it, resume checks.

A run folder is only ever replaced when flexsample made it (its marker file says so) and holds
nothing but flexsample's own files, never the current folder, a home folder or a filesystem root.
A new run is built in a hidden sibling folder and renamed into place once its set-up passed
every check, so a bad flag or a missing dataset leaves an old run untouched and no new folder.
A lock file held for the whole run keeps a second `--resume` out of a running folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flexsample.engine.errors import FlexsampleError

from . import outputs as out_files
from .config import stable_hash

MARKER = ".flexsample-run"
LOCK = ".flexsample.lock"
# every name a run (or a bench cell) writes into its folder
OWN_FILES = frozenset(
    {
        out_files.CONFIG,
        out_files.ROUNDS,
        out_files.SELECTION,
        out_files.SCORES,
        out_files.RESULTS,
        out_files.CURVES,
        out_files.CALIBRATION,
        out_files.TENSORBOARD_DIR,  # experiment trackers' default folders (--log-to)
        out_files.CSV_LOG_DIR,
        out_files.WANDB_DIR,
        out_files.CHECKPOINT,
        "checkpoint.prev.pt",
        "checkpoint.damaged.pt",  # a damaged checkpoint a resume moved aside
        out_files.BEST,
        "cell.json",  # a bench cell's record
        MARKER,
        LOCK,
    }
)
# errors of the file system, not of flexsample: reported as one line naming the path
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.EIO,
        errno.ENAMETOOLONG,
    }
)


def resume_command(out: Path) -> str:
    """The exact command that continues the run in `out`."""
    return f"flexsample run --out {shlex.quote(str(out))} --resume"


def _is_own_file(name: str) -> bool:
    """A file flexsample writes, or one of its temporary files (`.<name>.<random>`)."""
    if name in OWN_FILES:
        return True
    return name.startswith(".") and any(name.startswith(f".{own}.") for own in OWN_FILES)


def _protected(path: Path) -> str | None:
    """Why `path` may never be a run folder, or None."""
    real = path.resolve()
    if real == Path(real.anchor):
        return "a filesystem root"
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "the current folder" if real == cwd else "a parent of the current folder"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        return None
    if real == home or real in home.parents:
        return "the home folder" if real == home else "a parent of the home folder"
    return None


def _foreign_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not _is_own_file(p.name))


def check_replaceable(out: Path) -> None:
    """Refuse (one line) unless `out` is a run folder flexsample made and holds nothing else."""
    reason = _protected(out)
    if reason:
        raise FlexsampleError(
            f"--overwrite refuses to replace {out}: it is {reason}; choose a run folder for --out"
        )
    if not (out / MARKER).is_file():
        raise FlexsampleError(
            f"--overwrite refuses to replace {out}: flexsample did not make it (no {MARKER} "
            "marker); delete it yourself or choose another --out"
        )
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FlexsampleError(
            f"--overwrite refuses to replace {out}: it holds files flexsample did not write "
            f"({shown}); move them away or choose another --out"
        )


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def write_error(exc: OSError, path: Path, what: str = "write the run folder") -> FlexsampleError:
    """One line for a file-system error: the path and the cause."""
    cause = exc.strerror or str(exc)
    where = exc.filename if exc.filename else path
    return FlexsampleError(f"cannot {what} {path}: {cause} ({where})")


def check_target(out: Path, overwrite: bool) -> None:
    """Everything about `--out` that can be checked before any set-up work (touches nothing)."""
    reason = _protected(out)
    if reason:
        raise FlexsampleError(f"--out {out} is {reason}; choose a run folder of its own")
    if out.exists() and not out.is_dir():
        raise FlexsampleError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            check_replaceable(out)
        elif (out / MARKER).is_file() or (out / out_files.CONFIG).is_file():
            raise FlexsampleError(
                f"run folder {out} already exists; pass --overwrite to replace it, --resume to "
                "continue it, or choose another --out"
            )
        else:
            raise FlexsampleError(
                f"--out {out} is a folder holding other files, not a flexsample run; choose "
                "another --out"
            )
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise FlexsampleError(
            f"cannot create run folder {out}: {base} is a file, not a folder; choose another --out"
        )
    try:
        probe = tempfile.mkdtemp(prefix=".flexsample-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise write_error(exc, out, "create run folder") from None


class RunLock:
    """An exclusive `flock` on the run folder's lock file, held while a process writes the run."""

    def __init__(self, fd: int, folder: Path) -> None:
        self.fd = fd
        self.folder = folder

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FlexsampleError(
                f"run folder {folder} is in use by another flexsample process (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd, folder)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_siblings(out: Path) -> None:
    """Remove staging/old folders that a killed process left beside `out`."""
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    for p in out.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        kind, _, pid = p.name[len(prefix) :].rpartition("-")
        if kind in ("new", "old") and pid.isdigit() and (p / MARKER).is_file():
            if not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def install(out: Path, overwrite: bool, fill: Callable[[Path], None]) -> RunLock:
    """Build the new run folder beside `out` (`fill` writes its first files), then swap it in.

    Returns the lock of the new folder, held until the caller releases it. The old run (with
    `overwrite`) is moved away only now, after the new run's set-up passed, and deleted last.
    """
    parent = out.parent
    _clean_stale_siblings(out)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = parent / f".{out.name}.new-{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
    except OSError as exc:
        raise write_error(exc, out, "create run folder") from None
    lock: RunLock | None = None
    old: Path | None = None
    try:
        (stage / MARKER).write_text("a run folder made by flexsample; --overwrite may replace it\n")
        lock = RunLock.acquire(stage)
        fill(stage)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif out.exists():
            if not overwrite:
                raise FlexsampleError(
                    f"run folder {out} appeared while this run was set up; pass --overwrite to "
                    "replace it or choose another --out"
                )
            check_replaceable(out)
            with RunLock.acquire(out):
                old = parent / f".{out.name}.old-{os.getpid()}"
                os.rename(out, old)
        os.rename(stage, out)
        lock.folder = out
    except BaseException as exc:
        if old is not None and not out.exists():
            os.rename(old, out)
        if lock is not None:
            lock.release()
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            raise write_error(exc, out, "create run folder") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return lock


def remove_new_run(out: Path) -> None:
    """Delete a run folder this process made that never reached its first checkpoint."""
    if (out / MARKER).is_file() and not _foreign_files(out):
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------- resume checks


def read_config_document(out: Path) -> dict[str, Any]:
    """config.json of a run folder, with one-line errors for a missing or unreadable one."""
    if not out.exists():
        raise FlexsampleError(f"run folder {out} does not exist")
    if not out.is_dir():
        raise FlexsampleError(f"{out} is not a folder (expected a run folder)")
    path = out / out_files.CONFIG
    if not path.is_file():
        raise FlexsampleError(f"{out} is not a run folder (no {out_files.CONFIG})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlexsampleError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise FlexsampleError(f"{path} is not a flexsample config.json (no 'config' mapping)")
    return doc


def differences(old: dict[str, Any], new: dict[str, Any], keys: Any = None) -> list[str]:
    """'key: old -> new' for each key whose value differs."""
    keys = sorted(set(old) | set(new)) if keys is None else keys
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def flag_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """'--flag: saved -> given' for each given value that differs from the saved config."""
    return [
        f"--{k.replace('_', '-')}: {saved.get(k)!r} -> {v!r}"
        for k, v in sorted(given.items())
        if saved.get(k) != v
    ]


def check_checkpoint_meta(out: Path, doc: dict[str, Any], meta: dict[str, Any] | None) -> None:
    """Refuse a checkpoint from another run, or a config.json edited after the run started."""
    if not meta:
        return  # a checkpoint written before runs recorded their meta
    run_id, saved = doc.get("run_id"), doc["config"]
    diff = differences(meta.get("config") or {}, saved)
    if meta.get("run_id") and run_id and meta["run_id"] != run_id:
        detail = f"; differences (checkpoint -> config.json): {'; '.join(diff)}" if diff else ""
        raise FlexsampleError(
            f"the checkpoint in {out} belongs to another run (run id {meta['run_id']}, this "
            f"folder's config.json says {run_id}){detail}; resume only a run's own checkpoint"
        )
    if meta.get("config_hash") and meta["config_hash"] != stable_hash(saved):
        shown = "; ".join(diff) if diff else "(formatting only)"
        raise FlexsampleError(
            f"{out / out_files.CONFIG} was edited after the run started (checkpoint -> "
            f"config.json: {shown}); restore it, or start a new run with another --out"
        )


def finished_results(out: Path, epoch: int, epoch_budget: int) -> dict[str, Any] | None:
    """results.json when the run is complete and its results belong to that state, else None."""
    if epoch < epoch_budget:
        return None
    path = out / out_files.RESULTS
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(results, dict) and isinstance(results.get("test"), dict):
        return results
    return None


@contextlib.contextmanager
def os_errors(out: Path, what: str = "write the run folder") -> Iterator[None]:
    """File-system errors inside the block become one line naming the path and the cause."""
    try:
        yield
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            raise write_error(exc, out, what) from exc
        raise
