"""ISIC loaders on a small fake tree: tiny generated JPEGs under real names from the manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexsample.datasets import build_dataset
from flexsample.datasets.images import ImageSplit
from flexsample.datasets.safe_load import (
    load_label_dict,
    load_name_array,
    save_label_dict,
    save_name_array,
)
from flexsample.engine.errors import FlexsampleError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "isic-splits"
pytestmark = pytest.mark.skipif(
    not all((SHARED / k / "dic.npy").is_file() for k in ("8-class", "14-class")),
    reason=f"ISIC split manifests not found at {SHARED} (shared data folder absent)",
)


def _jpeg(path: Path, label: int, i: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng([label, i])
    arr = np.full((size[1], size[0], 3), (17 * label) % 200, dtype=np.uint8)
    arr = (arr + rng.integers(0, 40, arr.shape)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def subset(names: list[str], labels: dict[str, int], per_class: int, num_classes: int) -> list[str]:
    """The first `per_class` names of each class, in manifest order (with a _downsampled one)."""
    out: list[str] = []
    for c in range(num_classes):
        of_c = [n for n in names if labels[n] == c]
        down = [n for n in of_c if "_downsampled" in n][:1]
        out += down + [n for n in of_c if n not in down][: per_class - len(down)]
    return out


def make_fake_isic(
    root: Path, kind: str = "8-class", per_class: tuple[int, int, int] = (4, 2, 2)
) -> tuple[Path, Path, dict[str, list[str]]]:
    """(data_dir, splits_dir, {split: names}) with JPEGs in ISIC_2019_Training_Input/."""
    labels = load_label_dict(SHARED / kind / "dic.npy")
    num_classes = 8 if kind == "8-class" else 14
    files = (
        {s: f"{s}_100.npy" for s in ("train", "val", "test")}
        if kind == "8-class"
        else {s: f"{s}.npy" for s in ("train", "val", "test")}
    )
    data_dir, splits_dir = root / "data", root / "splits"
    splits_dir.mkdir(parents=True)
    chosen: dict[str, list[str]] = {}
    for (s, f), k in zip(files.items(), per_class, strict=True):
        chosen[s] = subset(load_name_array(SHARED / kind / f), labels, k, num_classes)
        save_name_array(splits_dir / f, chosen[s])
    used = {n for v in chosen.values() for n in v}
    save_label_dict(splits_dir / "dic.npy", {n: labels[n] for n in used})
    for i, n in enumerate(sorted(used)):
        _jpeg(data_dir / "ISIC_2019_Training_Input" / n, labels[n], i)
    return data_dir, splits_dir, chosen


@pytest.fixture
def fake8(tmp_path: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    return make_fake_isic(tmp_path)


def test_isic2019_builds_from_manifests(fake8) -> None:
    data_dir, splits_dir, chosen = fake8
    ds = build_dataset(
        "isic2019",
        imbalance_ratio=100,
        data_dir=str(data_dir),
        splits_dir=str(splits_dir),
        image_size=32,
        skip_missing=False,
    )
    assert ds.class_names == ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]
    assert ds.group_of_labels() == ["head"] * 2 + ["medium"] * 3 + ["tail"] * 3
    assert ds.train.ids == chosen["train"] and ds.test.ids == chosen["test"]
    assert ds.train_counts().tolist() == [4] * 8
    assert any("_downsampled" in n for n in ds.train.ids)
    assert isinstance(ds.train, ImageSplit) and ds.in_chans == 3 and ds.image_size == 32
    assert ds.info["skipped_missing"] == 0
    x, y = ds.val.torch_dataset(train=False)[0]
    assert x.shape == (3, 32, 32) and x.dtype.is_floating_point and y == ds.val.labels[0]
    xt, _ = ds.train.torch_dataset(train=True)[1]
    assert xt.shape == (3, 32, 32)


def test_images_found_anywhere_with_or_without_extension(fake8, tmp_path: Path) -> None:
    data_dir, splits_dir, chosen = fake8
    src = data_dir / "ISIC_2019_Training_Input"
    # the 384x384 re-encoding layout: a train/ folder, one image without `_downsampled`,
    # one PNG, nested sub-folders
    for i, p in enumerate(sorted(src.iterdir())):
        if i % 3 == 0:
            dest = data_dir / "train" / "nested" / p.name
        elif i % 3 == 1:
            dest = data_dir / "train" / p.name.replace("_downsampled", "")
        else:
            dest = data_dir / "other" / (p.stem + ".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).save(dest)
    for p in src.iterdir():
        p.unlink()
    ds = build_dataset(
        "isic2019",
        imbalance_ratio=100,
        data_dir=str(data_dir),
        splits_dir=str(splits_dir),
        image_size=16,
    )
    assert len(ds.train) == len(chosen["train"])


def test_shared_layout_and_data_dir_default(fake8) -> None:
    data_dir, splits_dir, _ = fake8
    # --splits-dir may be the parent of an 8-class/ folder; without it, the data dir is used
    nested = splits_dir.parent / "manifests"
    (nested / "8-class").mkdir(parents=True)
    for p in splits_dir.iterdir():
        p.rename(nested / "8-class" / p.name)
    ds = build_dataset("isic2019", data_dir=str(data_dir), splits_dir=str(nested), image_size=16)
    assert ds.info["splits_dir"].endswith("8-class")
    for p in (nested / "8-class").iterdir():
        p.rename(data_dir / p.name)
    ds = build_dataset("isic2019", data_dir=str(data_dir), image_size=16)
    assert len(ds.train) == 32


def test_isic_archive14(tmp_path: Path) -> None:
    data_dir, splits_dir, chosen = make_fake_isic(tmp_path, "14-class", per_class=(2, 1, 1))
    ds = build_dataset(
        "isic-archive14", data_dir=str(data_dir), splits_dir=str(splits_dir), image_size=16
    )
    assert ds.num_classes == 14 and ds.class_names[0] == "nevus"
    # the 14-class set has one split: an imbalance ratio is not one of its options
    with pytest.raises(FlexsampleError, match="'isic-archive14' has no option 'imbalance_ratio'"):
        build_dataset(
            "isic-archive14",
            data_dir=str(data_dir),
            splits_dir=str(splits_dir),
            image_size=16,
            imbalance_ratio=100,
        )
    assert ds.class_names[13] == "atypical melanocytic proliferation"
    assert ds.train.ids == chosen["train"]
    assert len(ds.group_of_labels()) == 14


def test_real_manifests_with_a_partial_image_folder(tmp_path: Path) -> None:
    """The full official r=100 split over a folder holding only some images: skip or refuse."""
    labels = load_label_dict(SHARED / "8-class" / "dic.npy")
    train = load_name_array(SHARED / "8-class" / "train_100.npy")
    keep = subset(train, labels, 3, 8)
    val = load_name_array(SHARED / "8-class" / "val_100.npy")
    test = load_name_array(SHARED / "8-class" / "test_100.npy")
    keep += subset(val, labels, 1, 8) + subset(test, labels, 1, 8)
    for i, n in enumerate(keep):
        _jpeg(tmp_path / "img" / n, labels[n], i, (12, 12))
    total = len(train) + len(val) + len(test)
    with pytest.raises(FlexsampleError, match=rf"{total - len(keep)} of {total} images .* missing"):
        build_dataset(
            "isic2019", data_dir=str(tmp_path / "img"), splits_dir=str(SHARED), image_size=8
        )
    ds = build_dataset(
        "isic2019",
        data_dir=str(tmp_path / "img"),
        splits_dir=str(SHARED),
        image_size=8,
        skip_missing=True,
    )
    assert ds.info["skipped_missing"] == total - len(keep)
    assert ds.train_counts().tolist() == [3] * 8
    assert len(ds.info["skipped_names"]) == 20


# ---------------------------------------------------------------- bad input


def _build(data_dir: Path, splits_dir: Path, **kw):
    opts = {"imbalance_ratio": 100, "image_size": 16, **kw}
    return build_dataset("isic2019", data_dir=str(data_dir), splits_dir=str(splits_dir), **opts)


def test_missing_folders_and_files(fake8, tmp_path: Path) -> None:
    data_dir, splits_dir, _ = fake8
    with pytest.raises(FlexsampleError, match="--data-dir is required"):
        build_dataset("isic2019", splits_dir=str(splits_dir))
    with pytest.raises(FlexsampleError, match="--data-dir not found.*nope"):
        _build(tmp_path / "nope", splits_dir)
    with pytest.raises(FlexsampleError, match="--splits-dir not found"):
        _build(data_dir, tmp_path / "nope")
    with pytest.raises(FlexsampleError, match="no dic.npy"):
        _build(data_dir, data_dir)
    with pytest.raises(FlexsampleError, match=r"train_200.npy not found.*present.*: 100"):
        _build(data_dir, splits_dir, imbalance_ratio=200)
    (splits_dir / "val_100.npy").unlink()
    with pytest.raises(FlexsampleError, match=r"split file not found: .*val_100.npy"):
        _build(data_dir, splits_dir)


def test_missing_images_reported_then_skipped(fake8) -> None:
    data_dir, splits_dir, chosen = fake8
    gone = [chosen["train"][0], chosen["train"][5], chosen["val"][0]]
    for n in gone:
        (data_dir / "ISIC_2019_Training_Input" / n).unlink()
    with pytest.raises(FlexsampleError) as err:
        _build(data_dir, splits_dir)
    msg = str(err.value)
    assert "3 of 64 images" in msg and gone[0] in msg and "--skip-missing" in msg
    assert "\n" not in msg
    ds = _build(data_dir, splits_dir, skip_missing=True)
    assert ds.info["skipped_missing"] == 3
    assert len(ds.train) == 30 and len(ds.val) == 15
    assert not set(gone) & set(ds.train.ids + ds.val.ids)


def test_corrupt_image_named_then_skipped(fake8) -> None:
    data_dir, splits_dir, chosen = fake8
    victim = data_dir / "ISIC_2019_Training_Input" / chosen["test"][3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(FlexsampleError, match=rf"corrupt image .*{victim.name}.*truncated"):
        _build(data_dir, splits_dir)
    ds = _build(data_dir, splits_dir, skip_missing=True)
    assert ds.info["skipped_corrupt"] == 1 and len(ds.test) == 15


def test_corrupt_inside_a_wellformed_file_is_caught_by_the_cache(fake8, tmp_path: Path) -> None:
    data_dir, splits_dir, chosen = fake8
    victim = data_dir / "ISIC_2019_Training_Input" / chosen["train"][2]
    raw = bytearray(victim.read_bytes())
    victim.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40 + bytes(raw[-2:]))  # markers, no image
    with pytest.raises(FlexsampleError, match=rf"{victim.name}"):
        _build(data_dir, splits_dir, cache_dir=str(tmp_path / "cache"))
    ds = _build(data_dir, splits_dir, cache_dir=str(tmp_path / "cache"), skip_missing=True)
    assert ds.info["skipped_corrupt"] == 1 and chosen["train"][2] not in ds.train.ids
    # without the cache the file is named when it is decoded
    ds = _build(data_dir, splits_dir)
    items = ds.train.torch_dataset(train=False)
    with pytest.raises(FlexsampleError, match=victim.name):
        items[ds.train.ids.index(chosen["train"][2])]


def test_labels_outside_range_and_unknown_names(fake8) -> None:
    data_dir, splits_dir, chosen = fake8
    labels = load_label_dict(splits_dir / "dic.npy")
    bad = dict(labels)
    bad[chosen["train"][1]] = 8
    save_label_dict(splits_dir / "dic.npy", bad)
    with pytest.raises(FlexsampleError, match=rf"label 8 of '{chosen['train'][1]}'.*0\.\.7"):
        _build(data_dir, splits_dir)
    bad = dict(labels)
    del bad[chosen["val"][2]]
    save_label_dict(splits_dir / "dic.npy", bad)
    with pytest.raises(
        FlexsampleError,
        match=rf"val_100.npy: 1 name\(s\) are not in .*dic.npy: "
        rf"{chosen['val'][2]}",
    ):
        _build(data_dir, splits_dir)


def test_overlapping_splits_and_empty_class(fake8) -> None:
    data_dir, splits_dir, chosen = fake8
    save_name_array(splits_dir / "test_100.npy", chosen["test"] + [chosen["train"][0]])
    with pytest.raises(
        FlexsampleError,
        match=rf"train_100.npy and test_100.npy overlap in 1 "
        rf"image\(s\): {chosen['train'][0]}",
    ):
        _build(data_dir, splits_dir)
    save_name_array(splits_dir / "test_100.npy", chosen["test"])
    labels = load_label_dict(splits_dir / "dic.npy")
    no_df = [n for n in chosen["train"] if labels[n] != 7]
    save_name_array(splits_dir / "train_100.npy", no_df)
    with pytest.raises(FlexsampleError, match=r"class 7 \(DF\) has no training image"):
        _build(data_dir, splits_dir)
    # a class emptied only by skipping missing images is refused as well
    save_name_array(splits_dir / "train_100.npy", chosen["train"])
    for n in chosen["train"]:
        if labels[n] == 6:
            (data_dir / "ISIC_2019_Training_Input" / n).unlink()
    with pytest.raises(FlexsampleError, match=r"class 6 \(VASC\) has no training image.*skipping"):
        _build(data_dir, splits_dir, skip_missing=True)


def test_imagefolder(tmp_path: Path) -> None:
    sizes = {"a": 40, "b": 25, "c": 12}
    for c, n in sizes.items():
        for i in range(n):
            _jpeg(tmp_path / "root" / c / f"{c}{i}.jpg", ord(c) - 97, i, (20, 16))
    (tmp_path / "root" / "notes").mkdir()  # a folder without images is not a class
    ds = build_dataset(
        "imagefolder",
        data_dir=str(tmp_path / "root"),
        imbalance_ratio=4,
        data_seed=1,
        image_size=16,
    )
    assert ds.class_names == ["a", "b", "c"]
    # smallest class 12 -> test 2, val 1 per class; remainders 37, 22, 9 -> profile 36, 18, 9
    assert np.bincount(ds.test.labels).tolist() == [2, 2, 2]
    assert np.bincount(ds.val.labels).tolist() == [1, 1, 1]
    assert ds.train_counts().tolist() == [36, 18, 9]
    assert all(
        i.split("/")[0] == ds.class_names[y]
        for i, y in zip(ds.train.ids, ds.train.labels, strict=True)
    )
    assert not set(ds.train.ids) & set(ds.test.ids)
    assert ds.train.torch_dataset(True)[0][0].shape == (3, 16, 16)
    again = build_dataset(
        "imagefolder",
        data_dir=str(tmp_path / "root"),
        imbalance_ratio=4,
        data_seed=1,
        image_size=16,
    )
    assert again.split_hash() == ds.split_hash()
    with pytest.raises(FlexsampleError, match="need at least 2"):
        build_dataset("imagefolder", data_dir=str(tmp_path / "root" / "a"))
    with pytest.raises(FlexsampleError, match=r"class folder .*c has 12 image\(s\)"):
        build_dataset("imagefolder", data_dir=str(tmp_path / "root"), test_per_class=12)
