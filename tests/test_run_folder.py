"""The run folder: what --overwrite may replace, when a folder appears, permissions, one-line
errors for folders and files, the resolved values in config.json, click usage errors."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from flexsample.engine import faults
from flexsample.workflows import rundir

from .conftest import TINY, one_error_line


@pytest.fixture(autouse=True)
def _fresh_faults(monkeypatch):
    """Fault hit counts are per process: each test counts from zero."""
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.delenv(faults.ENV, raising=False)


def _fill(folder: Path, names=("notes.txt", "data.csv")) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_text(f"precious {n}\n")
    return {n: (folder / n).read_bytes() for n in names}


# ------------------------------------------------------------------------------ --overwrite


def test_overwrite_refuses_the_current_folder(cli, tmp_path, monkeypatch):
    before = _fill(tmp_path)
    monkeypatch.chdir(tmp_path)
    line = one_error_line(cli("run", *TINY, "--out", ".", "--overwrite"))
    assert "current folder" in line, line
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_overwrite_refuses_the_home_folder(cli, tmp_path, monkeypatch):
    home = tmp_path / "home"
    before = _fill(home)
    monkeypatch.setenv("HOME", str(home))
    line = one_error_line(cli("run", *TINY, "--out", home, "--overwrite"))
    assert "home folder" in line, line
    assert {n: (home / n).read_bytes() for n in before} == before


def test_a_filesystem_root_is_never_a_run_folder():
    with pytest.raises(rundir.FlexsampleError, match="filesystem root"):
        rundir.check_target(Path("/"), True)


def test_overwrite_refuses_a_folder_flexsample_did_not_make(cli, tmp_path):
    out = tmp_path / "mine"
    before = _fill(out)
    line = one_error_line(cli("run", *TINY, "--out", out, "--overwrite"))
    assert "flexsample did not make it" in line and str(out) in line, line
    assert {n: (out / n).read_bytes() for n in before} == before


def test_overwrite_refuses_a_run_folder_holding_other_files(cli, tmp_path, tiny_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "my-notes.txt").write_text("keep me")
    line = one_error_line(cli("run", *TINY, "--out", out, "--overwrite"))
    assert "holds files flexsample did not write" in line and "my-notes.txt" in line, line
    assert (out / "my-notes.txt").read_text() == "keep me"


def test_without_overwrite_a_foreign_folder_is_not_called_a_run(cli, tmp_path):
    out = tmp_path / "mine"
    _fill(out)
    line = one_error_line(cli("run", *TINY, "--out", out))
    assert "not a flexsample run" in line, line


def test_overwrite_with_a_failing_set_up_keeps_the_old_run(cli, tmp_path, tiny_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = one_error_line(cli("run", *TINY, "--out", out, "--overwrite", "--device", "cuda:99"))
    assert "cuda:99" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


def test_overwrite_swaps_in_the_new_run(cli, tmp_path):
    out = tmp_path / "r"
    assert cli("run", *TINY, "--out", out, "--estimator", "random").exit_code == 0
    assert (out / rundir.MARKER).is_file()
    res = cli("run", *TINY, "--out", out, "--overwrite", "--estimator", "entropy")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["config"]["estimator"] == "entropy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_device_error_before_training_leaves_no_run_folder(cli, tmp_path):
    out = tmp_path / "new" / "run"
    one_error_line(cli("run", *TINY, "--out", out, "--device", "cuda:99"))
    assert not out.exists()
    assert not any(p.name.startswith(".run.") for p in (tmp_path / "new").glob(".*"))


def test_dataset_error_before_training_leaves_no_run_folder(cli, tmp_path):
    out = tmp_path / "run"
    line = one_error_line(
        cli("run", *TINY, "--out", out, "--dataset", "isic2019", "--data-dir", tmp_path / "x")
    )
    assert "--data-dir not found" in line, line
    assert not out.exists()


def test_failure_before_the_first_checkpoint_removes_the_new_folder(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "train-epoch:interrupt@1")
    out = tmp_path / "run"
    res = cli("run", *TINY, "--out", out)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == "interrupted"  # nothing to resume: no resume command
    assert not out.exists()


# ------------------------------------------------------------------------- config.json


def test_config_json_records_the_resolved_values(tiny_run):
    doc = json.loads((tiny_run / "config.json").read_text())
    assert doc["config"]["backbone"] == "auto" and doc["config"]["workers"] is None
    assert doc["resolved"] == {
        "backbone": "small-cnn",
        "image_size": 8,
        "device": "cpu",
        "workers": 0,  # digits-lt is held in memory: no DataLoader workers
        "eval_workers": 0,
    }
    assert doc["run_id"]


def test_resolved_workers_of_a_file_backed_split(monkeypatch):
    from types import SimpleNamespace

    import torch

    from flexsample.workflows.config import RunConfig
    from flexsample.workflows.run import resolved_values

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    split = SimpleNamespace(in_memory=None, cache=None)
    ds = SimpleNamespace(train=split, test=split, image_size=224)
    setup = SimpleNamespace(ds=ds, device=torch.device("cpu"))
    got = resolved_values(RunConfig(), setup)
    assert got["backbone"] == "resnet18" and got["image_size"] == 224
    assert got["workers"] == 6 and got["eval_workers"] == 6
    assert resolved_values(RunConfig(workers=2), setup)["workers"] == 2


# -------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_output_file_honours_the_umask(cli, tmp_path, mask, mode):
    out = tmp_path / "run"
    old = os.umask(mask)
    try:
        res = cli("run", *TINY, "--out", out)
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    for name in (
        "config.json",
        "results.json",
        "selection.npz",
        "scores.npz",
        "rounds.jsonl",
        "curves.png",
        "checkpoint.pt",
        "checkpoint.prev.pt",
        "best.pt",
    ):
        assert modes[name] == mode, (name, oct(modes[name]))


# ------------------------------------------------------------------ one-line file errors


def test_eval_of_a_missing_folder(cli, tmp_path):
    line = one_error_line(cli("eval", tmp_path / "absent"))
    assert f"run folder {tmp_path / 'absent'} does not exist" in line, line


def test_out_under_a_regular_file(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    line = one_error_line(cli("run", *TINY, "--out", out))
    assert str(out) in line and "is a file, not a folder" in line, line


def test_out_in_proc(cli):
    line = one_error_line(cli("run", *TINY, "--out", "/proc/flexsample-x/run"))
    assert "/proc/flexsample-x/run" in line and "No such file or directory" in line, line


def test_out_on_a_read_only_file_system(cli, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(rundir.tempfile, "mkdtemp", read_only)
    out = tmp_path / "run"
    line = one_error_line(cli("run", *TINY, "--out", out))
    assert str(out) in line and "Read-only file system" in line, line
    assert not out.exists()


def test_disk_full_mid_run_keeps_the_checkpoint_and_says_how_to_resume(
    cli, tmp_path, tiny_run, monkeypatch
):
    import numpy as np

    out = tmp_path / "run"
    # the 4th checkpoint-file write (best.pt and checkpoint.pt of epochs 1-2) finds a full disk
    monkeypatch.setenv(faults.ENV, "checkpoint-write:disk-full@4")
    line = one_error_line(cli("run", *TINY, "--out", out))
    assert "No space left on device" in line and str(out) in line, line
    assert "(epoch 1) is intact" in line, line
    assert f"resume with: flexsample run --out {out} --resume" in line, line
    monkeypatch.delenv(faults.ENV)
    res = cli("run", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    a, b = np.load(tiny_run / "selection.npz"), np.load(out / "selection.npz")
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["step"], b["step"])


# ----------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--workers", "1e23"], ["--workers", "integer"]),
        (["run", "--no-such-flag"], ["No such option: --no-such-flag"]),
        (["no-such-command"], ["No such command"]),
    ],
)
def test_usage_errors_are_one_line(cli, args, expected):
    line = one_error_line(cli(*args))
    for part in expected:
        assert part in line, line
    assert "--help" in line


def test_a_staging_folder_left_by_a_killed_run_is_cleaned_up(cli, tmp_path):
    stale = tmp_path / ".run.new-999999999"  # no such process
    stale.mkdir()
    (stale / rundir.MARKER).write_text("x")
    res = cli("run", *TINY, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
