"""Decoding, the decoded cache and the uint8 transforms: same pixels either way, picklable, fast."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Subset

from flexsample.datasets import images as im
from flexsample.datasets.images import (
    ColorJitter,
    DecodedCache,
    ImageItems,
    Normalize,
    check_image_file,
    dataloader_options,
    decode_square,
    find_image,
    index_images,
    train_augmentation,
)
from flexsample.engine.errors import FlexsampleError


def _bars(path: Path, w: int = 90, h: int = 60) -> Path:
    """Red | green | blue vertical bars: the centre crop of the shorter side is mostly green."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3 : 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3 :, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


@pytest.fixture
def jpegs(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = tmp_path / "img" / f"ISIC_{i:07d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p, quality=85)
        out.append(str(p))
    return out


def test_decode_square_is_resize_plus_centre_crop(tmp_path: Path) -> None:
    sq = decode_square(_bars(tmp_path / "bars.jpg"), 24)
    assert sq.shape == (24, 24, 3) and sq.dtype == np.uint8
    centre = sq[:, 8:16].reshape(-1, 3).mean(0)
    assert centre[1] > 200 and centre[0] < 60 and centre[2] < 60
    png = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 30), 77, dtype=np.uint8)).save(png)  # grayscale -> RGB
    assert (decode_square(png, 8) == 77).all()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(FlexsampleError, match="bad.jpg"):
        decode_square(bad, 8)


def test_structural_check(tmp_path: Path) -> None:
    good = _bars(tmp_path / "g.jpg")
    assert check_image_file(good) is None
    (tmp_path / "t.jpg").write_bytes(good.read_bytes()[:-300])
    assert "truncated" in check_image_file(tmp_path / "t.jpg")
    (tmp_path / "tail.jpg").write_bytes(good.read_bytes() + b"\x00" * 4096)  # data after EOI
    assert check_image_file(tmp_path / "tail.jpg") is None
    (tmp_path / "e.jpg").write_bytes(b"")
    assert check_image_file(tmp_path / "e.jpg") == "empty file"
    (tmp_path / "x.jpg").write_text("hello")
    assert "not an image" in check_image_file(tmp_path / "x.jpg")


def test_index_and_lookup(tmp_path: Path) -> None:
    for rel in ["a/ISIC_1.jpg", "b/c/ISIC_2_downsampled.JPG", "ISIC_3.png", ".hidden/ISIC_4.jpg"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    idx = index_images(tmp_path)
    assert find_image("ISIC_1.jpg", idx).endswith("a/ISIC_1.jpg")
    assert find_image("ISIC_1", idx) is not None
    assert find_image("ISIC_2.jpg", idx).endswith("ISIC_2_downsampled.JPG")
    assert find_image("ISIC_3_downsampled.jpg", idx).endswith("ISIC_3.png")
    assert find_image("ISIC_4.jpg", idx) is None


def test_cache_matches_decoding_bit_for_bit(jpegs: list[str], tmp_path: Path) -> None:
    labels = np.arange(len(jpegs)) % 3
    cache = DecodedCache(tmp_path / "cache")
    ref, bad = cache.build("t", jpegs, 20)
    assert bad == {} and ref.rows == len(jpegs)
    assert Path(ref.file).stat().st_size == 12 * 20 * 20 * 3
    decoded = ImageItems(jpegs, labels, 20, train=False)
    cached = ImageItems(jpegs, labels, 20, train=False, cache=ref)
    for i in range(len(jpegs)):
        a, ya = decoded[i]
        b, yb = cached[i]
        assert torch.equal(a, b) and ya == yb == labels[i]
    # eval tensors are normalised squares
    x = cached[0][0]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32 and -3 < float(x.mean()) < 3


def test_cache_is_reused_and_keyed(jpegs: list[str], tmp_path: Path, monkeypatch) -> None:
    cache = DecodedCache(tmp_path / "cache")
    ref, _ = cache.build("t", jpegs, 16)
    calls = []
    monkeypatch.setattr("flexsample.datasets.cache.decode_square", lambda *a: calls.append(a))
    again, _ = cache.build("t", jpegs, 16)
    assert again == ref and calls == []  # nothing decoded the second time
    monkeypatch.undo()
    other_size, _ = cache.build("t", jpegs, 12)
    fewer, _ = cache.build("t", jpegs[:-1], 16)
    assert len({ref.file, other_size.file, fewer.file}) == 3
    Path(jpegs[0]).write_bytes(Path(jpegs[1]).read_bytes() + b"\x00")  # same name, new content
    assert cache.build("t", jpegs, 16)[0].file != ref.file
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_train_augmentation_on_uint8(jpegs: list[str]) -> None:
    items = ImageItems(jpegs, np.zeros(len(jpegs)), 24, train=True)
    torch.manual_seed(0)
    a = items[0][0]
    torch.manual_seed(0)
    b = items[0][0]
    c = items[0][0]
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug = train_augmentation(24)
    x = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    assert aug(x).dtype == torch.uint8 and aug(x).shape == (3, 24, 24)


@pytest.mark.parametrize(
    "b, c, s", [(1.2, 1.0, 1.0), (1.0, 0.8, 1.0), (1.0, 1.0, 1.25), (0.85, 1.15, 0.8)]
)
def test_colour_jitter_matches_torchvision(b: float, c: float, s: float, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(40, 210, (3, 32, 32), dtype=np.uint8))  # no clipping
    xf = x.float() / 255  # float reference: torchvision's uint8 path truncates at every step
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(xf, b), c), s) * 255
    cj = ColorJitter(0.2, 0.2, 0.2, 0.0)
    factors = iter([b, c, s])
    monkeypatch.setattr(cj, "_factor", lambda spread: next(factors))
    out = cj(x)
    assert out.dtype == torch.uint8
    diff = (out.float() - ref).abs()
    assert diff.max() <= 1.0  # we round once; the float reference does not round
    assert torch.equal(ColorJitter(0, 0, 0, 0)(x), x)


def test_normalize_is_imagenet() -> None:
    x = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    expected = torch.tensor(
        [(1 - m) / s for m, s in zip(im.IMAGENET_MEAN, im.IMAGENET_STD, strict=True)]
    )
    assert torch.allclose(Normalize()(x)[:, 0, 0], expected, atol=1e-5)


def test_items_pickle_and_work_in_dataloader_workers(jpegs: list[str], tmp_path: Path) -> None:
    labels = np.arange(len(jpegs)) % 2
    ref, _ = DecodedCache(tmp_path / "c").build("t", jpegs, 16)
    items = ImageItems(jpegs, labels, 16, train=False, cache=ref, rows=np.arange(len(jpegs)))
    items[0]  # opens the memmap in this process
    clone = pickle.loads(pickle.dumps(items))
    assert clone._mm is None and torch.equal(clone[3][0], items[3][0])
    loader = DataLoader(items, batch_size=5, num_workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert torch.equal(xs, torch.stack([items[i][0] for i in range(len(items))]))
    # through Subset (as training wraps it), the batched fetch keeps order and labels
    order = [7, 2, 11, 0, 5]
    x, y = next(iter(DataLoader(Subset(items, order), batch_size=5)))
    assert torch.equal(x, torch.stack([items[i][0] for i in order]))
    assert y.tolist() == labels[order].tolist()
    opts = dataloader_options("cpu", num_workers=2)
    assert opts["pin_memory"] is False and opts["num_workers"] == 2
    assert dataloader_options("cuda", 4)["pin_memory"] is True
    assert dataloader_options("cuda", 4)["persistent_workers"] is True
    assert dataloader_options("cpu", 2)["persistent_workers"] is True  # no restart per epoch
    assert "persistent_workers" not in dataloader_options("cpu", 0)
    assert dataloader_options("cpu", cached=True, train=False)["num_workers"] == 0
    assert dataloader_options("cpu", cached=True, train=True)["num_workers"] >= 1


# ---------------------------------------------------------------- unreadable files, one line each


def _bomb_png(path: Path) -> Path:
    """A 30000 x 30000 PNG (about 110 kB on disk): PIL refuses it as a decompression bomb."""
    Image.new("1", (30000, 30000)).save(path, optimize=True)
    return path


def _garbage_jpeg(path: Path) -> Path:
    """Valid JPEG markers (SOI, headers, SOS, EOI) around a garbage entropy-coded body."""
    _bars(path)
    raw = path.read_bytes()
    sos = raw.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")
    path.write_bytes(raw[:start] + b"\xff\xd8" * ((len(raw) - start) // 2) + b"\xff\xd9")
    return path


def test_every_decoder_failure_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bomb = _bomb_png(tmp_path / "bomb.png")
    garbage = _garbage_jpeg(tmp_path / "garbage.jpg")
    for path, cause in ((bomb, "DecompressionBombError"), (garbage, "OSError")):
        # decoding raises one line naming the file, whatever PIL raised
        with pytest.raises(FlexsampleError) as info:
            decode_square(path, 16)
        assert path.name in str(info.value) and cause in str(info.value)
        assert "\n" not in str(info.value)
        # the cheap check passes these well-formed files; the decoding check names the cause
        assert check_image_file(path) is None
        reason = check_image_file(path, decode_size=16)
        assert reason is not None and cause in reason and "\n" not in reason
        # inside DataLoader workers: the same one line, not a flattened worker traceback
        items = ImageItems([str(path)] * 2, np.array([0, 1]), 16, train=True)
        with pytest.raises(FlexsampleError) as info:
            list(DataLoader(items, batch_size=2, num_workers=1))
        text = str(info.value)
        assert text.startswith(f"corrupt or unreadable image {path}: {cause}"), text
        assert "\n" not in text and "Traceback" not in text and "worker" not in text
    # a bomb whose end is cut off goes through the full-decode confirmation: a reason, no raise
    cut = tmp_path / "cut.png"
    cut.write_bytes(bomb.read_bytes()[:-40])
    assert "truncated PNG" in check_image_file(cut)
