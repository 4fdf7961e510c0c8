"""`flexsample splits` reproduces the official class counts and the manifest format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flexsample.cli.splits_cmd import splits as splits_command
from flexsample.datasets.profiles import ISIC2019_CODES, isic2019_train_counts
from flexsample.datasets.safe_load import load_label_dict, load_name_array
from flexsample.datasets.splits import generate_splits, read_ground_truth
from flexsample.engine.errors import FlexsampleError

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "isic-splits" / "8-class"
needs_splits = pytest.mark.skipif(
    not (SPLITS / "dic.npy").is_file(),
    reason=f"ISIC split manifests not found at {SPLITS} (shared data folder absent)",
)
COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_csv(path: Path, labels: dict[str, int]) -> Path:
    """An ISIC_2019_Training_GroundTruth.csv equivalent: image (no extension) + one-hot floats."""
    lines = ["image," + ",".join(COLUMNS)]
    for name, label in sorted(labels.items()):
        code = ISIC2019_CODES[label]
        row = ["1.0" if c == code else "0.0" for c in COLUMNS]
        lines.append(name.removesuffix(".jpg") + "," + ",".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def official() -> dict[str, int]:
    if not (SPLITS / "dic.npy").is_file():
        pytest.skip(f"ISIC split manifests not found at {SPLITS} (shared data folder absent)")
    return load_label_dict(SPLITS / "dic.npy")


@pytest.fixture(scope="module")
def gt_csv(official: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("gt") / "ISIC_2019_Training_GroundTruth.csv", official)


def _counts(names: list[str], labels: dict[str, int]) -> list[int]:
    return np.bincount([labels[n] for n in names], minlength=8).tolist()


@needs_splits
def test_csv_reads_back_to_the_official_labels(gt_csv: Path, official: dict[str, int]) -> None:
    assert read_ground_truth(gt_csv) == official


@needs_splits
@pytest.mark.parametrize("ratio", [100, 200, 500])
def test_counts_match_the_official_files(
    ratio: int, gt_csv: Path, official: dict[str, int], tmp_path: Path
) -> None:
    counts = generate_splits(gt_csv, ratio, data_seed=0, out=tmp_path)
    assert load_label_dict(tmp_path / "dic.npy") == official
    made = {s: load_name_array(tmp_path / f"{s}_{ratio}.npy") for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        reference = load_name_array(SPLITS / f"{s}_{ratio}.npy")
        assert _counts(made[s], official) == _counts(reference, official), s
        assert counts[s].tolist() == _counts(reference, official)
        assert np.load(tmp_path / f"{s}_{ratio}.npy").dtype.kind == "U"
    assert _counts(made["val"], official) == [50] * 8
    assert _counts(made["test"], official) == [100] * 8
    sets = [set(v) for v in made.values()]
    assert sum(map(len, sets)) == len(set().union(*sets))  # disjoint, no repeats


@needs_splits
def test_seed_and_other_ratios(gt_csv: Path, official: dict[str, int], tmp_path: Path) -> None:
    generate_splits(gt_csv, 300, 0, tmp_path / "a")
    generate_splits(gt_csv, 300, 0, tmp_path / "b")
    generate_splits(gt_csv, 300, 1, tmp_path / "c")
    a, b, c = (load_name_array(tmp_path / d / "train_300.npy") for d in "abc")
    assert a == b and a != c
    expected = [round(5000 * 300 ** (-i / 7)) for i in range(8)]
    assert _counts(a, official) == expected == isic2019_train_counts(300)


@needs_splits
def test_refuses_to_overwrite(gt_csv: Path, tmp_path: Path) -> None:
    generate_splits(gt_csv, 100, 0, tmp_path)
    generate_splits(gt_csv, 200, 0, tmp_path)  # same dic.npy: a second ratio is fine
    before = (tmp_path / "train_100.npy").read_bytes()
    with pytest.raises(FlexsampleError, match="refusing to overwrite.*--overwrite"):
        generate_splits(gt_csv, 100, 5, tmp_path)
    assert (tmp_path / "train_100.npy").read_bytes() == before
    generate_splits(gt_csv, 100, 5, tmp_path, overwrite=True)
    assert (tmp_path / "train_100.npy").read_bytes() != before


def test_cli_function_and_bad_csv(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("splits")(splits_command)
    app.command("other")(lambda: None)  # two commands: `splits` stays a sub-command
    runner = CliRunner()
    # a tiny CSV, too small for the official counts: a one-line error naming the class, exit 2
    labels = {f"ISIC_{i:07d}.jpg": i % 8 for i in range(80)}
    csv = write_csv(tmp_path / "gt.csv", labels)
    res = runner.invoke(app, ["splits", "--ground-truth", str(csv), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "class 0 (NV) has 10 images" in res.stderr, res.output
    assert not (tmp_path / "o").exists()

    enough = {f"ISIC_{i:07d}.jpg": i % 8 for i in range(8 * 170)}
    csv = write_csv(tmp_path / "gt2.csv", enough)
    res = runner.invoke(
        app,
        [
            "splits",
            "--ground-truth",
            str(csv),
            "--imbalance-ratio",
            "1000",
            "--data-seed",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    # at R=1000 the head needs 5000 images: still an error, nothing written
    assert res.exit_code == 2 and "--head-count" in res.stderr, res.output
    assert not (tmp_path / "o").exists()

    few = {f"ISIC_{i:07d}_downsampled.jpg": i % 8 for i in range(8 * 5200)}
    csv = write_csv(tmp_path / "gt3.csv", few)
    res = runner.invoke(
        app,
        [
            "splits",
            "--ground-truth",
            str(csv),
            "--imbalance-ratio",
            "100",
            "--out",
            str(tmp_path / "ok"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "5000" in res.output
    res = runner.invoke(app, ["splits", "--ground-truth", str(csv), "--out", str(tmp_path / "ok")])
    assert res.exit_code == 2 and "--overwrite" in res.stderr, res.output

    bad = tmp_path / "bad.csv"
    bad.write_text("image,MEL,NV\nISIC_1,1,0\n")
    with pytest.raises(FlexsampleError, match="missing column"):
        read_ground_truth(bad)
    bad.write_text("image," + ",".join(COLUMNS) + "\nISIC_1,0,0,0,0,0,0,0,0,1\n")
    with pytest.raises(FlexsampleError, match=r"bad.csv:2: image ISIC_1 needs exactly one"):
        read_ground_truth(bad)
    with pytest.raises(FlexsampleError, match="not found"):
        read_ground_truth(tmp_path / "absent.csv")
