"""A researcher's own images: class folders, train/val/test folders and datalists, used as given,
with a table of what went where; every unreadable image one line naming it, or skipped."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from flexsample.datasets import build_dataset
from flexsample.engine.errors import FlexsampleError
from flexsample.workflows.progress import Reporter


class Notes(Reporter):
    """Keeps the reporter's messages (the allocation table) and counted tasks."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.tasks: list[str] = []

    @contextlib.contextmanager
    def task(self, name: str, total: int):
        self.tasks.append(name)
        yield lambda n=1: None

    def message(self, text: str) -> None:
        self.messages.append(text)


def _images(folder: Path, n: int, tag: int = 0, ext: str = ".png") -> list[Path]:
    rng = np.random.default_rng(tag)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{folder.name}{tag}_{i}{ext}"
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _counts(split) -> list[int]:
    return np.bincount(split.labels, minlength=3).tolist()


@pytest.fixture
def long_tailed(tmp_path: Path) -> Path:
    """The issue's folder: already long-tailed, 50 / 30 / 20 images."""
    root = tmp_path / "derm"
    for tag, (c, n) in enumerate({"mel": 50, "nv": 30, "bcc": 20}.items()):
        _images(root / c, n, tag)
    return root


def test_imagefolder_keeps_the_folders_own_distribution(long_tailed: Path) -> None:
    notes = Notes()
    ds = build_dataset(
        "imagefolder", {"data_dir": str(long_tailed), "image_size": 8}, progress=notes
    )
    assert ds.class_names == ["bcc", "mel", "nv"]
    # smallest class 20: test 4 and val 2 per class carved out; every other image trains
    assert _counts(ds.test) == [4, 4, 4] and _counts(ds.val) == [2, 2, 2]
    assert _counts(ds.train) == [14, 44, 24]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 100
    rows = {r["class"]: r for r in ds.info["allocation"]["classes"]}
    assert rows["mel"] == {
        "class": "mel",
        "train": 44,
        "val": 2,
        "test": 4,
        "unused": 0,
        "skipped": 0,
    }
    assert ds.info["imbalance_ratio"] is None
    # the table reached the user through the reporter, and is the recorded one
    assert notes.messages == [ds.info["allocation"]["table"]]
    table = notes.messages[0]
    assert "nothing resampled" in table and "carved per class" in table
    assert any(line.split() == ["mel", "44", "2", "4", "0", "0"] for line in table.splitlines())
    assert any(line.split() == ["total", "82", "6", "12", "0", "0"] for line in table.splitlines())


def test_imagefolder_resamples_only_when_a_ratio_is_given(long_tailed: Path) -> None:
    notes = Notes()
    ds = build_dataset(
        "imagefolder",
        {"data_dir": str(long_tailed), "image_size": 8, "imbalance_ratio": 100},
        progress=notes,
    )
    assert _counts(ds.train) == [1, 44, 4]  # the old behaviour, now asked for by name
    rows = {r["class"]: r for r in ds.info["allocation"]["classes"]}
    assert [rows[c]["unused"] for c in ("bcc", "mel", "nv")] == [13, 0, 20]
    assert "resampled to imbalance ratio 100" in notes.messages[0]


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    root = tmp_path / "hospital"
    sizes = {"train": (12, 7, 5), "val": (2, 2, 1), "test": (3, 3, 3)}
    for split, ns in sizes.items():
        for tag, (c, n) in enumerate(zip(("a", "b", "c"), ns, strict=True)):
            _images(root / split / c, n, tag + 10 * len(split))
    notes = Notes()
    ds = build_dataset("imagefolder", {"data_dir": str(root), "image_size": 8}, progress=notes)
    assert ds.class_names == ["a", "b", "c"]
    assert _counts(ds.train) == [12, 7, 5]
    assert _counts(ds.val) == [2, 2, 1] and _counts(ds.test) == [3, 3, 3]
    assert all(i.startswith("val/") for i in ds.val.ids)
    assert ds.info["allocation"]["splits"]["test"] == "given"
    assert ds.info["layout"] == "split folders (train/, val/, test/)"
    # without val/, validation is carved per class from train/ (test/ still as given)
    for p in (root / "val").rglob("*.png"):
        p.unlink()
    ds = build_dataset("imagefolder", {"data_dir": str(root), "image_size": 8, "data_seed": 3})
    assert _counts(ds.val) == [1, 1, 1] and _counts(ds.test) == [3, 3, 3]
    assert _counts(ds.train) == [11, 6, 4]
    assert set(ds.val.ids) <= {
        f"train/{p.relative_to(root / 'train')}" for p in (root / "train").rglob("*.png")
    }
    assert "carved" in ds.info["allocation"]["splits"]["val"]
    with pytest.raises(FlexsampleError, match="gives its own test split: drop test_per_class"):
        build_dataset("imagefolder", {"data_dir": str(root), "test_per_class": 2})
    _images(root / "d", 3)  # a class folder beside the split folders is ambiguous
    with pytest.raises(FlexsampleError, match=r"class folder\(s\) d beside them"):
        build_dataset("imagefolder", {"data_dir": str(root)})


def test_monai_json_datalist(tmp_path: Path) -> None:
    imgs = {
        c: _images(tmp_path / "imgs" / c, n, k)
        for k, (c, n) in enumerate({"benign": 9, "malignant": 6}.items())
    }

    def entries(c: str, sl: slice) -> list[dict]:
        return [{"image": str(p.relative_to(tmp_path)), "label": c} for p in imgs[c][sl]]

    doc = {
        "training": entries("benign", slice(0, 7)) + entries("malignant", slice(0, 4)),
        "validation": entries("benign", slice(7, 8)) + entries("malignant", slice(4, 5)),
        "test": entries("benign", slice(8, 9)) + entries("malignant", slice(5, 6)),
    }
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    notes = Notes()
    ds = build_dataset(
        "datalist", {"datalist": str(tmp_path / "datalist.json"), "image_size": 8}, progress=notes
    )
    assert ds.class_names == ["benign", "malignant"]
    assert ds.train_counts().tolist() == [7, 4]
    assert np.bincount(ds.val.labels).tolist() == [1, 1]
    assert ds.test.ids == [doc["test"][0]["image"], doc["test"][1]["image"]]
    assert "datalist (train, val, test)" == ds.info["layout"] and notes.messages
    # integer labels named by "classes"; no validation list: carved from training
    doc = {
        "classes": ["benign", "malignant"],
        "training": [
            {"image": e["image"], "label": int(e["label"] == "malignant")} for e in doc["training"]
        ],
        "test": doc["test"],
    }
    (tmp_path / "ints.json").write_text(json.dumps(doc))
    ds = build_dataset(
        "datalist", {"datalist": "ints.json", "data_dir": str(tmp_path), "image_size": 8}
    )
    assert np.bincount(ds.val.labels).tolist() == [1, 1]
    assert ds.train_counts().tolist() == [6, 3] and len(ds.test) == 2


def test_isic_ground_truth_csv(tmp_path: Path) -> None:
    """One-hot class columns, ids without extension, a never-used UNK column, no split."""
    folder = tmp_path / "ISIC_2019_Training_Input"
    rows = ["image,MEL,NV,BCC,UNK"]
    n = 0
    for k, (c, count) in enumerate({"MEL": 8, "NV": 14, "BCC": 6}.items()):
        rng = np.random.default_rng(k)
        for _ in range(count):
            name = f"ISIC_{n:07d}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                folder / f"{name}.jpg"
            )
            hot = ["1.0" if c == col else "0.0" for col in ("MEL", "NV", "BCC", "UNK")]
            rows.append(",".join([name, *hot]))
            n += 1
    gt = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    gt.write_text("\n".join(rows) + "\n")
    notes = Notes()
    ds = build_dataset("datalist", {"datalist": str(gt), "image_size": 8}, progress=notes)
    assert ds.class_names == ["MEL", "NV", "BCC"]  # column order; UNK never set: dropped
    assert np.bincount(ds.test.labels).tolist() == [1, 1, 1]  # smallest class 6: 1 test, 1 val
    assert np.bincount(ds.val.labels).tolist() == [1, 1, 1]
    assert ds.train_counts().tolist() == [6, 12, 4]
    assert "UNK never set" in notes.messages[0]
    # a plain label/split CSV with an unknown split value, then a row that is not one-hot
    (tmp_path / "bad.csv").write_text(
        "image,label,split\nISIC_0000000,MEL,training\nISIC_0000001,NV,holdout\n"
    )
    with pytest.raises(FlexsampleError, match=r"line 3 has split 'holdout'"):
        build_dataset("datalist", {"datalist": str(tmp_path / "bad.csv")})
    gt.write_text("\n".join([*rows, "ISIC_0000099,1.0,1.0,0.0,0.0"]) + "\n")
    with pytest.raises(FlexsampleError, match=r"line 30 \(ISIC_0000099\) is not one-hot"):
        build_dataset("datalist", {"datalist": str(gt)})


def test_csv_datalist_with_split_column_and_missing_images(tmp_path: Path) -> None:
    lines = ["image,label,split"]
    for k, (c, n) in enumerate({"x": 6, "y": 5}.items()):
        for i, p in enumerate(_images(tmp_path / c, n, k)):
            split = "train" if i < n - 2 else ("val" if i == n - 2 else "test")
            lines.append(f"{c}/{p.name},{c},{split}")
    lines.append("x/gone.png,x,train")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        FlexsampleError,
        match=r"1 of 12 images listed in .*list\.csv are missing"
        r".*x/gone\.png",
    ):
        build_dataset("datalist", {"datalist": str(tmp_path / "list.csv")})
    notes = Notes()
    ds = build_dataset(
        "datalist",
        {"datalist": str(tmp_path / "list.csv"), "image_size": 8, "skip_missing": True},
        progress=notes,
    )
    assert ds.train_counts().tolist() == [4, 3] and len(ds.val) == 2 and len(ds.test) == 2
    assert ds.info["skipped_missing"] == 1
    assert ds.info["allocation"]["classes"][0]["skipped"] == 1


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("bad")
    Image.new("1", (30000, 30000)).save(tmp / "bomb.png", optimize=True)  # ~110 kB on disk
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp / "ok.jpg")
    raw = (tmp / "ok.jpg").read_bytes()
    sos = raw.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")
    garbage = raw[:start] + b"\xff\xd8" * ((len(raw) - start) // 2) + b"\xff\xd9"
    return {"bomb.png": (tmp / "bomb.png").read_bytes(), "garbage.jpg": garbage}


@pytest.mark.parametrize("cache", [False, True])
def test_skip_missing_drops_what_workers_would_fail_on(
    long_tailed: Path, bad_images: dict[str, bytes], tmp_path: Path, cache: bool
) -> None:
    for name, data in bad_images.items():
        (long_tailed / "mel" / name).write_bytes(data)
    opts = {"data_dir": str(long_tailed), "image_size": 8, "skip_missing": True}
    runtime = {"cache_dir": str(tmp_path / "cache")} if cache else {}
    ds = build_dataset("imagefolder", opts, **runtime)
    assert ds.info["skipped_corrupt"] == 2
    assert {n.split("/")[-1] for n in ds.info["skipped_names"]} == set(bad_images)
    assert sum(r["skipped"] for r in ds.info["allocation"]["classes"]) == 2
    # every remaining image decodes inside DataLoader workers
    for split in (ds.train, ds.val, ds.test):
        loader = DataLoader(split.torch_dataset(True), batch_size=16, num_workers=2)
        assert sum(len(y) for _, y in loader) == len(split)


def test_a_run_names_the_unreadable_image_in_one_line(
    cli, long_tailed: Path, bad_images: dict[str, bytes], tmp_path: Path
) -> None:
    bad = long_tailed / "mel" / "garbage.jpg"
    bad.write_bytes(bad_images["garbage.jpg"])
    res = cli(
        "run",
        "--dataset",
        "imagefolder",
        "--data-dir",
        long_tailed,
        "--image-size",
        "8",
        "--backbone",
        "small-cnn",
        "--rounds",
        "2",
        "--epochs-per-round",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        tmp_path / "run",
    )
    # the allocation table (stderr, beside progress), then one error line naming the file
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("imagefolder from ") and lines[-2].split()[0] == "total"
    line = lines[-1]
    assert line.startswith("error: corrupt or unreadable image"), res.stderr
    assert str(bad) in line and "OSError" in line and len(line) < 300, line
    res = cli(
        "run",
        "--dataset",
        "imagefolder",
        "--data-dir",
        long_tailed,
        "--image-size",
        "8",
        "--backbone",
        "small-cnn",
        "--rounds",
        "2",
        "--epochs-per-round",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--skip-missing",
        "--out",
        tmp_path / "run2",
    )
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config["dataset_info"]["skipped_corrupt"] == 1
