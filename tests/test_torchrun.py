"""`torchrun -m flexsample run` with 2 processes (gloo on the CPU): one run folder, errors on
every rank as one line with the same exit code, no hang, resume on another world size, and the
example of a user's own DDP loop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # a hang fails the test instead of the CI job
FAST = ["--rounds", "2", "--epochs-per-round", "1", "--device", "cpu"]


def torchrun(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *args,
    ]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSAMPLE_FAULT")}
    full_env = {**inherited, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT
    )


def rank_exit_codes(stderr: str) -> list[int]:
    """The workers' exit codes from torchrun's failure report."""
    return [int(c) for c in re.findall(r"exitcode\s+:\s*(-?\d+)", stderr)]


def our_lines(stderr: str) -> list[str]:
    """flexsample's own lines on stderr (not torchrun's log lines and failure report)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("error:", "interrupted", "terminated", "internal error:"))
    ]


def test_two_processes_write_one_run_folder(tmp_path: Path) -> None:
    proc = torchrun(["-m", "flexsample", "run", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1, folders  # one timestamped name, rank 0's, for both ranks
    results = json.loads((folders[0] / "results.json").read_text())
    assert results["world_size"] == 2
    assert 0.0 < results["test"]["balanced_accuracy"] <= 1.0
    assert proc.stdout.count("outputs in") == 1  # rank 0 alone prints
    assert our_lines(proc.stderr) == []


def test_bad_flag_exits_2_on_every_rank_with_one_line(tmp_path: Path) -> None:
    proc = torchrun(["-m", "flexsample", "run", "--estimator", "nope", *FAST], tmp_path)
    lines = our_lines(proc.stderr)
    assert lines == [lines[0]] * 2 and lines[0].startswith("error: unknown estimator 'nope'")
    assert rank_exit_codes(proc.stderr) == [2, 2]
    assert not (tmp_path / "runs").exists()


def test_failure_on_one_rank_ends_every_rank_with_its_line(tmp_path: Path) -> None:
    proc = torchrun(
        ["-m", "flexsample", "run", *FAST, "--out", "r"],
        tmp_path,
        FLEXSAMPLE_FAULT="train-epoch:disk-full@1",
        FLEXSAMPLE_FAULT_RANK="1",
    )
    lines = our_lines(proc.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], proc.stderr[-3000:]
    assert "No space left on device (injected at train-epoch)" in lines[0]
    assert rank_exit_codes(proc.stderr) == [2, 2]
    assert not (tmp_path / "r").exists()  # it failed before its first checkpoint: removed


def test_interrupted_run_resumes_on_one_process(tmp_path: Path) -> None:
    proc = torchrun(
        ["-m", "flexsample", "run", *FAST, "--out", "r"],
        tmp_path,
        FLEXSAMPLE_FAULT="train-epoch:interrupt@2",
    )
    lines = our_lines(proc.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], proc.stderr[-3000:]
    assert lines[0].startswith("interrupted; resume with:")
    assert rank_exit_codes(proc.stderr) == [130, 130]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSAMPLE_FAULT")}
    again = subprocess.run(
        [sys.executable, "-m", "flexsample", "run", "--resume", "--out", "r", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming a run started on 2 process(es) with 1" in again.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["world_size"] == 1


@pytest.mark.parametrize("estimator", ["mcdropout"])
def test_own_ddp_loop_example_keeps_one_pool(tmp_path: Path, estimator: str) -> None:
    proc = torchrun(
        [
            str(REPO / "examples" / "torchrun_loop.py"),
            "--rounds",
            "2",
            "--epochs",
            "1",
            "--estimator",
            estimator,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s); identical pools on every rank: True" in proc.stdout
    assert proc.stdout.count("best val bal-acc") == 1
