"""`flexsample splits`: every error is one line with exit 2, nothing half-written; custom counts."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flexsample.cli.app import app
from flexsample.datasets import splits as splits_mod
from flexsample.datasets.profiles import ISIC2019_OFFICIAL_TRAIN
from flexsample.datasets.safe_load import load_label_dict, load_name_array
from flexsample.datasets.splits import make_splits, train_counts, write_splits
from flexsample.engine.errors import FlexsampleError

from .conftest import one_error_line
from .test_splits_generator import COLUMNS, write_csv


def invoke(*args: str | Path):
    return CliRunner().invoke(app, ["splits", *map(str, args)])


def labels_per_class(per_class: int) -> dict[str, int]:
    return {f"ISIC_{c}{i:06d}.jpg": c for c in range(8) for i in range(per_class)}


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "gt.csv", labels_per_class(30))


def test_too_small_names_the_class_and_counts(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    line = one_error_line(invoke("--ground-truth", small_csv, "--out", out))
    assert "class 0 (NV) has 30 images, fewer than the 5150" in line, line
    assert "test 100 + val 50 + train 5000" in line and "(and 7 more class(es) short)" in line
    assert "--head-count" in line and "--val-per-class" in line and "--test-per-class" in line
    assert not (tmp_path / "deep").exists()


def test_missing_csv_and_folder_as_csv(tmp_path: Path) -> None:
    line = one_error_line(invoke("--ground-truth", tmp_path / "absent.csv", "--out", tmp_path))
    assert "ground-truth CSV not found" in line and "absent.csv" in line
    line = one_error_line(invoke("--ground-truth", tmp_path, "--out", tmp_path / "o"))
    assert "is a folder" in line


def test_csv_without_the_columns_says_which_are_expected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,melanoma\nISIC_1,1\n")
    line = one_error_line(invoke("--ground-truth", bad, "--out", tmp_path / "o"))
    assert "missing column(s) image, NV, MEL" in line
    assert "expected image, " + ", ".join(COLUMNS) in line
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    assert "not a text CSV" in one_error_line(invoke("--ground-truth", binary, "--out", tmp_path))
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = [
        "--ground-truth",
        small_csv,
        "--out",
        out,
        "--head-count",
        "10",
        "--val-per-class",
        "5",
        "--test-per-class",
        "5",
    ]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_error_line(invoke(*args, "--data-seed", "4"))
    assert "refusing to overwrite" in line and "pass --overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert invoke(*args, "--data-seed", "4", "--overwrite").exit_code == 0
    assert (out / "train_100.npy").read_bytes() != before["train_100.npy"]


def test_custom_counts_for_a_small_set(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = invoke(
        "--ground-truth",
        small_csv,
        "--out",
        out,
        "--imbalance-ratio",
        "10",
        "--val-per-class",
        "3",
        "--test-per-class",
        "4",
        "--head-count",
        "20",
    )
    assert res.exit_code == 0, res.output
    labels = load_label_dict(out / "dic.npy")
    got = {
        s: np.bincount(
            [labels[n] for n in load_name_array(out / f"{s}_10.npy")], minlength=8
        ).tolist()
        for s in ("train", "val", "test")
    }
    assert got["val"] == [3] * 8 and got["test"] == [4] * 8
    assert got["train"] == [round(20 * 10 ** (-i / 7)) for i in range(8)] == train_counts(10, 20)
    assert "train" in res.stdout and "   20" in res.stdout


def test_default_head_keeps_the_official_counts() -> None:
    for ratio, official in ISIC2019_OFFICIAL_TRAIN.items():
        assert train_counts(ratio) == official
        assert train_counts(ratio, 5000) == official
    assert train_counts(100, 200) == [200, 104, 54, 28, 14, 7, 4, 2]
    assert train_counts(1, 1) == [1] * 8


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--val-per-class", "0", "--val-per-class must be an integer >= 1, got 0"),
        ("--test-per-class", "-2", "--test-per-class must be an integer >= 1, got -2"),
        ("--head-count", "0", "--head-count must be an integer >= 1, got 0"),
        ("--imbalance-ratio", "inf", "--imbalance-ratio must be a finite number >= 1"),
        ("--imbalance-ratio", "0.5", "--imbalance-ratio must be a finite number >= 1"),
        ("--data-seed", "-1", "--data-seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_numbers_are_one_line(
    small_csv: Path, tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    line = one_error_line(invoke("--ground-truth", small_csv, "--out", tmp_path / "o", flag, value))
    assert expected in line, line
    assert not (tmp_path / "o").exists()


def test_out_under_a_file_is_one_line(small_csv: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [
        "--ground-truth",
        small_csv,
        "--head-count",
        "10",
        "--val-per-class",
        "2",
        "--test-per-class",
        "2",
    ]
    assert "--out is not a folder" in one_error_line(invoke(*args, "--out", blocker))
    line = one_error_line(invoke(*args, "--out", blocker / "sub"))
    assert f"cannot write splits to {blocker / 'sub'}" in line


def test_debug_shows_the_traceback(small_csv: Path, tmp_path: Path) -> None:
    res = invoke("--ground-truth", small_csv, "--out", tmp_path / "o", "--debug")
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_a_failed_write_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = labels_per_class(30)
    parts = make_splits(labels, 10, 0, 2, 2, head_count=10)
    out = tmp_path / "new" / "out"
    calls = {"n": 0}
    real = splits_mod.save_name_array

    def full_disk(path: Path, names: list[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # dic.npy and train written, val fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, names)

    monkeypatch.setattr(splits_mod, "save_name_array", full_disk)
    with pytest.raises(FlexsampleError, match="cannot write splits to .*No space left on device"):
        write_splits(out, labels, parts, 10)
    assert not (tmp_path / "new").exists()  # the folders it made are gone with the temp files

    # an existing folder keeps exactly what it had
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    calls["n"] = 0
    with pytest.raises(FlexsampleError, match="No space left"):
        write_splits(out, labels, parts, 10)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_rows_are_one_line_naming_the_row(tmp_path: Path) -> None:
    header = "image," + ",".join(COLUMNS)
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "\nISIC_1,yes,0,0,0,0,0,0,0,0\n")
    line = one_error_line(invoke("--ground-truth", bad, "--out", tmp_path / "o"))
    assert "bad.csv:2: non-numeric value 'yes' in column MEL" in line
    bad.write_text(header + "\n")
    assert "no images listed" in one_error_line(invoke("--ground-truth", bad, "--out", tmp_path))
    bad.write_text(header + "\nISIC_1,1,0,0,0,0,0,0,0,0\nISIC_1,1,0,0,0,0,0,0,0,0\n")
    assert "bad.csv:3: image ISIC_1 listed twice" in one_error_line(
        invoke("--ground-truth", bad, "--out", tmp_path / "o")
    )
    assert not (tmp_path / "o").exists()
