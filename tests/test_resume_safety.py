"""--resume that is safe: a lock, the same command continuing, different flags refused, edited
config.json and foreign checkpoints refused, finished runs left alone, fallbacks said, and
every file resume appends to made consistent with the checkpoint it continues from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flexsample.engine import faults
from flexsample.workflows import rundir

from .conftest import TINY, one_error_line


@pytest.fixture(autouse=True)
def _fresh_faults(monkeypatch):
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.delenv(faults.ENV, raising=False)


@pytest.fixture
def unfinished(tmp_path: Path, tiny_run: Path) -> Path:
    """A copy of the tiny run rolled back to its checkpoint after epoch 5 of 6."""
    out = tmp_path / "unfinished"
    shutil.copytree(tiny_run, out)
    shutil.copy(out / "checkpoint.prev.pt", out / "checkpoint.pt")
    return out


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("selection.npz", "scores.npz"):
        za, zb = np.load(a / name), np.load(b / name)
        assert set(za.files) == set(zb.files), name
        for key in za.files:
            assert np.array_equal(za[key], zb[key]), (name, key)
    ra = [json.loads(x) for x in (a / "rounds.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "rounds.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [0, 1, 2]
    assert [r["subset_size"] for r in ra] == [r["subset_size"] for r in rb]
    res_a = json.loads((a / "results.json").read_text())
    res_b = json.loads((b / "results.json").read_text())
    assert res_a["test"]["confusion_matrix"] == res_b["test"]["confusion_matrix"]


def test_same_command_with_resume_appended_continues(cli, unfinished, tiny_run):
    res = cli("run", *TINY, "--out", unfinished, "--resume")
    assert res.exit_code == 0, res.output
    assert "resuming from checkpoint.pt (epoch 5)" in res.stderr
    _same_outputs(tiny_run, unfinished)


def test_the_runs_own_config_file_with_resume_continues(cli, unfinished, tiny_run):
    res = cli(
        "run", "--config", unfinished / "config.json", "--out", unfinished, "--resume", "--quiet"
    )
    assert res.exit_code == 0, res.output
    _same_outputs(tiny_run, unfinished)


def test_differing_flags_are_refused_with_the_differences(cli, unfinished):
    line = one_error_line(
        cli("run", *TINY, "--out", unfinished, "--resume", "--lr", "0.01", "--seed", "2")
    )
    assert "--lr: 0.003 -> 0.01" in line and "--seed: 0 -> 2" in line, line
    assert "--rounds" not in line  # given but equal to the saved value


def test_a_second_resume_on_a_running_folder_is_refused(cli, unfinished):
    before = (unfinished / "results.json").read_bytes()
    with rundir.RunLock.acquire(unfinished):
        line = one_error_line(cli("run", "--out", unfinished, "--resume", "--quiet"))
    assert "in use by another flexsample process" in line and str(unfinished) in line, line
    assert (unfinished / "results.json").read_bytes() == before


def test_config_json_edited_after_the_start_is_refused(cli, unfinished):
    path = unfinished / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["lr"] = 0.01
    path.write_text(json.dumps(doc))
    line = one_error_line(cli("run", "--out", unfinished, "--resume", "--quiet"))
    assert "was edited after the run started" in line and "lr: 0.003 -> 0.01" in line, line


def test_a_checkpoint_from_another_run_is_refused(cli, tmp_path, unfinished):
    other = tmp_path / "other"
    assert cli("run", *TINY, "--out", other).exit_code == 0
    shutil.copy(unfinished / "checkpoint.pt", other / "checkpoint.pt")
    line = one_error_line(cli("run", "--out", other, "--resume", "--quiet"))
    assert "belongs to another run" in line, line


def test_resume_of_a_finished_run_changes_nothing(cli, tmp_path, tiny_run):
    out = tmp_path / "done"
    shutil.copytree(tiny_run, out)

    def files() -> dict[str, tuple[bytes, int]]:  # the lock file records who holds it: not output
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in out.iterdir()
            if p.name != rundir.LOCK
        }

    before = files()
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert "already finished" in res.stdout
    assert files() == before


def test_a_folder_without_checkpoint_suggests_overwrite(cli, unfinished):
    for p in unfinished.glob("checkpoint*.pt"):
        p.unlink()
    line = one_error_line(cli("run", "--out", unfinished, "--resume", "--quiet"))
    assert "no checkpoint" in line and "--overwrite" in line, line


def test_a_fallback_to_the_previous_checkpoint_is_said(cli, unfinished, tiny_run):
    shutil.copy(unfinished / "checkpoint.pt", unfinished / "checkpoint.prev.pt")
    (unfinished / "checkpoint.pt").write_bytes(b"garbage, not a checkpoint")
    res = cli("run", "--out", unfinished, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert "checkpoint.prev.pt" in res.stderr and "damaged" in res.stderr, res.stderr
    _same_outputs(tiny_run, unfinished)


def test_resume_of_a_missing_folder(cli, tmp_path):
    line = one_error_line(cli("run", "--out", tmp_path / "absent", "--resume"))
    assert "does not exist" in line


def test_interrupt_between_query_and_checkpoint_duplicates_no_scores(
    cli, tmp_path, tiny_run, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setenv(faults.ENV, "query:interrupt@1")  # step 1's scores written, no checkpoint
    res = cli("run", *TINY, "--out", out)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == f"interrupted; resume with: flexsample run --out {out} --resume"
    assert (np.load(out / "scores.npz")["step"] == 1).any()  # ahead of the checkpoint
    monkeypatch.delenv(faults.ENV)
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    _same_outputs(tiny_run, out)


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_a_damaged_scores_file_neither_blocks_resume_nor_loses_steps(
    cli, unfinished, tiny_run, damage
):
    if damage == "corrupt":
        (unfinished / "scores.npz").write_bytes(b"PK\x03\x04 not really a zip")
    else:
        (unfinished / "scores.npz").unlink()
    res = cli("run", "--out", unfinished, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    _same_outputs(tiny_run, unfinished)


def test_interrupt_before_evaluation_resumes_to_the_results(cli, tmp_path, tiny_run, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(faults.ENV, "evaluation:interrupt")
    res = cli("run", *TINY, "--out", out)
    assert res.exit_code == 130 and "resume with:" in res.stderr, res.output
    assert not (out / "results.json").exists()
    monkeypatch.delenv(faults.ENV)
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    _same_outputs(tiny_run, out)
