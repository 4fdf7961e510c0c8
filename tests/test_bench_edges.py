"""Edges of `flexsample bench` (issue 23): two benches on one folder, copied cell folders and
edited results, the Slurm path never unpickling, ties and an estimator that never ran, and the
grid driver's helpers."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flexsample.engine.errors import FlexsampleError
from flexsample.workflows import bench as bench_mod
from flexsample.workflows.bench import run_bench
from flexsample.workflows.config import build_config
from flexsample.workflows.launchers import Launcher, Outcome

from .conftest import one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CELL = ["--rounds", "2", "--epochs-per-round", "1", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


# --- 1. one bench per folder -------------------------------------------------------------------


class HeldLauncher(Launcher):
    """Runs nothing: its cells stay running until `release` is set (a bench mid-grid)."""

    name = "held"
    slots = None

    def __init__(self) -> None:
        self.submitted = threading.Event()
        self.release = threading.Event()

    def submit(self, tasks):
        self.submitted.set()
        return list(range(len(tasks)))

    def poll(self, job):
        if not self.release.is_set():
            return None
        return Outcome(False, error="held cell released", user_error=True)

    def cancel(self, jobs):
        self.release.set()


def test_a_second_bench_on_a_running_folder_is_one_line_and_touches_nothing(cli, tmp_path):
    out = tmp_path / "b"
    base = build_config([("test", {"rounds": 2, "epochs_per_round": 1, "device": "cpu"})])
    held = HeldLauncher()
    first = threading.Thread(
        target=run_bench, args=(base, out), kwargs={"launcher": held, "retries": 0}, daemon=True
    )
    first.start()
    try:
        assert held.submitted.wait(60), "the first bench never started its grid"
        before = snapshot(out)
        res = cli("bench", "--out", out, *TINY_CELL)
        line = one_error_line(res)
        assert line == (
            f"error: bench folder {out} is in use by another flexsample bench (pid "
            f"{os.getpid()} on {socket.gethostname()}); wait for it to finish, stop it, or "
            "choose another --out"
        )
        assert snapshot(out) == before  # nothing written, nothing overwritten
        assert not (out / "bench.csv").exists()
    finally:
        held.release.set()
        first.join(60)
    # once the first bench ended, the folder is free again
    with bench_mod.BenchLock.acquire(out):
        pass


def test_the_lock_of_a_dead_bench_never_blocks(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps(record))
    with bench_mod.BenchLock.acquire(out):  # flock: the kernel dropped the dead holder's lock
        assert json.loads((out / bench_mod.BENCH_LOCK).read_text())["pid"] == os.getpid()


def test_without_flock_the_holder_record_decides(tmp_path, monkeypatch):
    """A filesystem without flock (some NFS, Lustre mounts): a record of a pid gone from this
    host is stale and taken over; a live one, or one of another host, refuses."""
    out = tmp_path / "b"
    out.mkdir()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(bench_mod.fcntl, "flock", no_flock)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": host}))
    lock = bench_mod.BenchLock.acquire(out)
    assert json.loads((out / bench_mod.BENCH_LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / bench_mod.BENCH_LOCK).exists()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": alive.pid, "host": host}))
        with pytest.raises(FlexsampleError, match=rf"\(pid {alive.pid} on {host}\); wait"):
            bench_mod.BenchLock.acquire(out)
    finally:
        alive.kill()
        alive.wait()
    (out / bench_mod.BENCH_LOCK).write_text(json.dumps({"pid": 1234, "host": "elsewhere"}))
    with pytest.raises(FlexsampleError, match=r"\(pid 1234 on elsewhere\); if it no longer"):
        bench_mod.BenchLock.acquire(out)
