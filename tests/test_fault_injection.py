"""Fault injection (FLEXSAMPLE_FAULT): runs killed at named points resume to the results of an
uninterrupted run; damaged checkpoints fall back, saying so; a full disk keeps the previous
checkpoint; out-of-memory while scoring retries at half the batch, then names the flag.

The loop-level checks run in-process on a scripted learner; the end-to-end ones run
`python -m flexsample run` in subprocesses (a SIGKILL must really end the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexsample.engine import faults
from flexsample.engine.checkpoint import load_checkpoint, temp_paths
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.loop import Callback

from .test_loop import make_loop

TINY = ["--rounds", "3", "--epochs-per-round", "2", "--quiet", "--device", "cpu"]


@pytest.fixture
def fault(monkeypatch):
    def set_fault(spec: str | None) -> None:
        monkeypatch.setattr(faults, "_hits", {})
        if spec is None:
            monkeypatch.delenv(faults.ENV, raising=False)
        else:
            monkeypatch.setenv(faults.ENV, spec)

    return set_fault


# -- in-process: the loop's fault points, callback state, meta, out-of-memory ---------------


class Counter(Callback):
    """A stateful callback: counts queries; its count must survive a resume."""

    state_key = "counter"

    def __init__(self) -> None:
        self.queries = 0

    def on_query(self, result) -> None:
        self.queries += 1

    def state_dict(self):
        return {"queries": self.queries, "steps": np.arange(self.queries)}

    def load_state_dict(self, state) -> None:
        self.queries = int(state["queries"])
        assert np.array_equal(state["steps"], np.arange(self.queries))


class Stateless(Callback):
    state_key = "ignored"  # no state_dict(): not saved


def loop_with(tmp_path: Path, name: str, meta=None):
    loop, learner = make_loop(checkpoint_dir=tmp_path / name)
    counter = Counter()
    loop.callbacks += [counter, Stateless()]
    loop.meta = dict(meta or {})
    return loop, counter


@pytest.mark.parametrize("spec", ["train-epoch:interrupt@4", "query:interrupt@2"])
def test_loop_resumes_from_a_fault_point(tmp_path: Path, fault, spec: str) -> None:
    fault(None)
    ref, ref_counter = loop_with(tmp_path, "ref")
    ref.run()
    fault(spec)
    crashing, _ = loop_with(tmp_path, "b", meta={"config_hash": "abc"})
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    fault(None)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["callbacks"]["counter"]["queries"] == 1
    assert list(state["callbacks"]) == ["counter"]  # a state_key without state_dict is skipped
    resumed, counter = loop_with(tmp_path, "c")
    resumed.load_state_dict(state)
    assert resumed.loaded_meta == {"config_hash": "abc"}
    assert counter.queries == 1  # restored: the interrupted query is not counted twice
    resumed.run()
    assert np.array_equal(resumed.pool.entered, ref.pool.entered)
    assert counter.queries == ref_counter.queries == 2


def test_a_checkpoint_without_callback_state_leaves_callbacks_as_they_are(tmp_path: Path) -> None:
    loop, _ = loop_with(tmp_path, "a")
    state = loop.state_dict()
    del state["callbacks"], state["meta"]  # as written before checkpoints held them
    other, counter = loop_with(tmp_path, "b")
    counter.queries = 7
    other.load_state_dict(state)
    assert counter.queries == 7 and other.loaded_meta is None


def test_scoring_oom_retries_once_at_half_the_batch(tmp_path: Path, fault) -> None:
    fault(None)
    ref, _ = make_loop()
    ref.run()
    fault("scoring:oom")
    loop, _ = make_loop()
    loop.run()
    assert np.array_equal(loop.pool.entered, ref.pool.entered)
    assert loop.score_batch_size == 8  # make_loop scores 16 at a time; halved once


def test_scoring_oom_twice_names_the_flag(fault) -> None:
    fault("scoring:oom@1,scoring:oom@2")
    loop, _ = make_loop()
    with pytest.raises(FlexsampleError) as info:
        loop.run()
    msg = str(info.value)
    assert msg.startswith("out of memory while scoring") and "\n" not in msg
    assert "--score-batch-size 16, then 8" in msg and "--score-batch-size (e.g. 4)" in msg


# -- end to end: killed runs resume to the uninterrupted results ------------------------------


def flexsample(*args: str, fault_spec: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if fault_spec:
        env[faults.ENV] = fault_spec
    return subprocess.run(
        [sys.executable, "-m", "flexsample", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def outputs(out: Path) -> dict:
    """What must not depend on interruptions: selection, scores, steps, test metrics."""
    sel = np.load(out / "selection.npz")
    scores = np.load(out / "scores.npz")
    results = json.loads((out / "results.json").read_text())
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return {
        "selection": {k: sel[k].tolist() for k in ("index", "step", "train_ids")},
        "scores": {k: scores[k].tolist() for k in ("step", "index", "score")},
        "rounds": [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rounds],
        "test": results["test"],
        "test_last": results["test_last"],
        "best": (results["best_val_balanced_accuracy"], results["subset_size_at_best"]),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ref")
    res = flexsample("run", *TINY, "--out", "ref", cwd=root)
    assert res.returncode == 0, res.stderr
    return outputs(root / "ref")


# each kill point: the process dies (SIGKILL) there; plain `--resume` must finish the run
KILLS = [
    "train-epoch@3",  # mid round 2, after training, before validation and checkpoint
    "query@2",  # the second query grew the pool and wrote selection/scores; no checkpoint yet
    "scoring",  # inside the first scoring pass (the last query takes all: nothing to score)
    "checkpoint-rename@2",  # a complete temp file, before any rename
    "checkpoint-rotate@4",  # between the renames: checkpoint.prev.pt + temp, no checkpoint.pt
    "checkpoint-write@3",  # half-written temp file
]


@pytest.mark.parametrize("kill", KILLS)
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, reference: dict, kill: str
) -> None:
    res = flexsample("run", *TINY, "--out", "run", fault_spec=kill, cwd=tmp_path)
    assert res.returncode == -9, (kill, res.returncode, res.stderr)
    assert not (tmp_path / "run" / "results.json").exists()
    res = flexsample("run", "--out", "run", "--resume", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, (kill, res.stderr)
    assert outputs(tmp_path / "run") == reference, kill
    assert not temp_paths(tmp_path / "run" / "checkpoint.pt")


@pytest.mark.parametrize("damage", ["garbage"])  # truncated: see test_checkpoint_safety
def test_damaged_checkpoint_falls_back_to_prev_saying_so(
    tmp_path: Path, reference: dict, damage: str
) -> None:
    res = flexsample("run", *TINY, "--out", "run", fault_spec="train-epoch@5", cwd=tmp_path)
    assert res.returncode == -9, res.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(os.urandom(4096) if damage == "garbage" else data[: len(data) // 3])
    res = flexsample("run", "--out", "run", "--resume", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    said = res.stdout + res.stderr
    assert "checkpoint.pt is damaged" in said and "checkpoint.prev.pt (epoch 3)" in said, said
    assert outputs(tmp_path / "run") == reference


def test_disk_full_while_writing_a_checkpoint(tmp_path: Path) -> None:
    res = flexsample(
        "run", *TINY, "--out", "run", fault_spec="checkpoint-write:disk-full@4", cwd=tmp_path
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    line = lines[0].lower()
    assert "no space left on device" in line and "run" in line
    assert "intact" in line or "kept" in line  # it says the previous checkpoint survives
    run = tmp_path / "run"
    # the 4th write (epoch 1 or 2): the previous checkpoint is intact, nothing half-written
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1
    assert not temp_paths(run / "checkpoint.pt") and not temp_paths(run / "best.pt")


def test_scoring_oom_on_the_command_line_is_one_line(cli, tmp_path: Path, fault) -> None:
    from .conftest import one_error_line

    fault("scoring:oom@1,scoring:oom@2")
    line = one_error_line(cli("run", *TINY, "--score-batch-size", "64", "--out", tmp_path / "r"))
    assert "out of memory while scoring" in line
    assert "--score-batch-size 64, then 32" in line and "--score-batch-size (e.g. 16)" in line
