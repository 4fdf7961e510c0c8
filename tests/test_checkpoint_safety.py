"""Checkpoints load with weights_only=True: state round-trips, crafted files run nothing,
failed writes keep the previous checkpoint, and recovery after a crash says what it used."""

from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flexsample.engine import faults
from flexsample.engine.checkpoint import (
    load_checkpoint,
    prev_path,
    recover_checkpoint,
    save_atomic,
    temp_paths,
)
from flexsample.engine.errors import FlexsampleError
from flexsample.engine.interfaces import ValRecord


@pytest.fixture
def fault(monkeypatch):
    """Set FLEXSAMPLE_FAULT for this test, with fresh hit counts."""

    def set_fault(spec: str) -> None:
        monkeypatch.setattr(faults, "_hits", {})
        monkeypatch.setenv(faults.ENV, spec)

    return set_fault


def rich_state() -> dict:
    """What state dicts hold: arrays of every kind, NumPy scalars and RNGs, torch state."""
    rng = np.random.default_rng(7)
    rng.random(3)
    legacy = np.random.RandomState(3)
    legacy.rand(2)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.AdamW(module.parameters())
    module(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "int64": np.arange(5, dtype=np.int64),
        "float32_2d": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "bool": np.array([True, False]),
        "strided": np.arange(10)[::-3],
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 4)),
        "uint32": np.arange(4, dtype=np.uint32),
        "big_endian": np.arange(3, dtype=">i4"),
        "strings": np.array(["ISIC_001.jpg", "b"]),
        "scalars": [np.float64(0.25), np.int64(3), np.bool_(True), np.float32(1.5)],
        "generator": rng,
        "bitgen": np.random.PCG64(11),
        "legacy": legacy,
        "torch_rng": torch.get_rng_state(),
        "tuple": (1, 2.0, "x", None),
        "set": {1, 2},
        "array_keys": {np.int64(4): "a", (1, 2): "b"},
        "path": Path("runs/x"),
        "dataclass": ValRecord(3, 0.5, (0.25, 0.75)),
        "model": module.state_dict(),
        "optimizer": opt.state_dict(),
        "nested": {"deep": [{"a": np.ones(2)}]},
    }


def assert_same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.random.Generator | np.random.BitGenerator | np.random.RandomState):
        pass  # compared by their draws below
    else:
        assert a == b


def test_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    state = rich_state()
    path = tmp_path / "checkpoint.pt"
    save_atomic(path, state)
    back = load_checkpoint(path)
    assert_same(state, back)
    assert back["generator"].random() == state["generator"].random()
    assert back["bitgen"].random_raw() == state["bitgen"].random_raw()
    assert back["legacy"].rand() == state["legacy"].rand()
    assert back["model"]._metadata == state["model"]._metadata  # module versions kept
    assert "format_version" not in back
    # a non-dict object is stored too
    save_atomic(tmp_path / "list.pt", [np.arange(3), 1])
    assert_same(load_checkpoint(tmp_path / "list.pt"), [np.arange(3), 1])


def test_plain_torch_load_of_a_checkpoint_works(tmp_path: Path) -> None:
    """What a user types: torch.load(path) with torch's default weights_only=True."""
    path = tmp_path / "best.pt"
    module = torch.nn.Linear(3, 2)
    save_atomic(path, {"model": module.state_dict(), "subset_counts": np.array([3, 1])})
    raw = torch.load(path)
    assert raw["format_version"] == 1
    module.load_state_dict(raw["model"])  # the weights are a plain state dict of tensors
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["model"]["weight"], module.weight.detach())


def test_unstorable_state_is_named_at_save(tmp_path: Path) -> None:
    with pytest.raises(FlexsampleError, match=r"at state\['estimator'\]\['index'\]"):
        save_atomic(tmp_path / "c.pt", {"estimator": {"index": object()}})
    with pytest.raises(FlexsampleError, match="object array"):
        save_atomic(tmp_path / "c.pt", {"a": np.array([None, 1], dtype=object)})
    assert not list(tmp_path.iterdir())


class _WritesMarker:
    """Unpickling this would create a file: the classic code-running pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def crafted_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    save_atomic(good, {"epoch": 1, "pool": {"index": np.arange(100)}})
    files = {
        "torch-zip with code": tmp_path / "evil_zip.pt",
        "raw pickle with code": tmp_path / "evil_pickle.pt",
        "garbage": tmp_path / "garbage.pt",
        "truncated": tmp_path / "truncated.pt",
        "empty": tmp_path / "empty.pt",
        "no format_version": tmp_path / "foreign.pt",
        "wrong shape": tmp_path / "list.pt",
    }
    torch.save({"epoch": 1, "x": _WritesMarker(marker)}, files["torch-zip with code"])
    files["raw pickle with code"].write_bytes(pickle.dumps(_WritesMarker(marker)))
    files["garbage"].write_bytes(os.urandom(2000))
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(2)}}, files["no format_version"])
    torch.save([1, 2, 3], files["wrong shape"])
    return files


def test_crafted_files_are_refused_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    for kind, path in crafted_files(tmp_path, marker).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing but the one-line error reaches the user
            with pytest.raises(FlexsampleError) as info:
                load_checkpoint(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, kind
        assert "not a flexsample checkpoint" in msg, (kind, msg)
        assert not marker.exists(), kind


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, fault) -> None:
    path = tmp_path / "checkpoint.pt"
    save_atomic(path, {"epoch": 1}, rotate=True)
    save_atomic(path, {"epoch": 2}, rotate=True)
    for point in ("checkpoint-write", "checkpoint-rename"):
        fault(f"{point}:disk-full")
        with pytest.raises(FlexsampleError) as info:
            save_atomic(path, {"epoch": 3, "big": np.zeros(100_000)}, rotate=True)
        msg = str(info.value)
        assert str(path) in msg and "no space left on device" in msg and "kept" in msg
        assert load_checkpoint(path)["epoch"] == 2
        assert load_checkpoint(prev_path(path))["epoch"] == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "checkpoint.prev.pt",
            "checkpoint.pt",
        ]


def test_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_atomic(tmp_path / "a.pt", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644


# -- recovery --------------------------------------------------------------------------------


def two_checkpoints(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pt"
    save_atomic(path, {"epoch": 4}, rotate=True)
    save_atomic(path, {"epoch": 5}, rotate=True)
    return path


def test_recover_uses_the_checkpoint_when_it_loads(tmp_path: Path) -> None:
    path = two_checkpoints(tmp_path)
    (tmp_path / ".checkpoint.pt.stale.tmp").write_bytes(b"half a file")
    state, said = recover_checkpoint(path)
    assert state["epoch"] == 5 and said == "resuming from checkpoint.pt (epoch 5)"
    assert not temp_paths(path)  # stale temp files are removed


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_recover_falls_back_to_prev_saying_so(tmp_path: Path, damage: str) -> None:
    path = two_checkpoints(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.unlink()
    state, said = recover_checkpoint(path)
    assert state["epoch"] == 4
    problem = "is missing" if damage == "missing" else "is damaged"
    assert said.startswith(f"checkpoint.pt {problem}")
    assert "; resuming from checkpoint.prev.pt (epoch 4)" in said
    if damage != "missing":
        assert said.endswith("(the damaged file is kept as checkpoint.damaged.pt)")
    # the next rotation must not push a damaged file over the good previous one
    save_atomic(path, {"epoch": 5}, rotate=True)
    assert load_checkpoint(prev_path(path))["epoch"] == 4


def test_crash_between_the_renames_resumes_from_the_complete_temp(tmp_path: Path, fault) -> None:
    path = two_checkpoints(tmp_path)
    fault("checkpoint-rotate:interrupt")
    with pytest.raises(KeyboardInterrupt):
        save_atomic(path, {"epoch": 6}, rotate=True)
    # what a SIGKILL between the renames leaves (an interrupt cleans its temp file up)
    assert not path.exists() and not temp_paths(path)
    save_atomic(tmp_path / "new.pt", {"epoch": 6})
    os.replace(tmp_path / "new.pt", tmp_path / ".checkpoint.pt.abc123.tmp")
    (tmp_path / ".checkpoint.pt.zzz.tmp").write_bytes(b"incomplete")
    state, said = recover_checkpoint(path)
    assert state["epoch"] == 6
    assert "checkpoint.pt is missing" in said and ".checkpoint.pt.abc123.tmp" in said
    assert load_checkpoint(path)["epoch"] == 6  # moved into place
    assert load_checkpoint(prev_path(path))["epoch"] == 5
    assert not temp_paths(path)


def test_nothing_usable_says_so_and_suggests_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(FlexsampleError, match="checkpoint.pt is missing.*--overwrite"):
        recover_checkpoint(path)
    path.write_bytes(b"junk")
    prev_path(path).write_bytes(b"junk")
    with pytest.raises(FlexsampleError) as info:
        recover_checkpoint(path)
    msg = str(info.value)
    assert "checkpoint.pt is damaged" in msg and "checkpoint.prev.pt is damaged" in msg
    assert "--overwrite" in msg and "\n" not in msg


# -- through the command: `flexsample eval` reads best.pt, `--resume` reads checkpoint.pt -----


def crafted_copy(tiny_run: Path, tmp_path: Path, marker: Path, *names: str) -> Path:
    """A copy of a finished run whose files `names` are code-running pickles."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in names:
        torch.save({"epoch": 5, "model": _WritesMarker(marker)}, run / name)
    return run


def test_eval_refuses_a_crafted_best_pt(cli, tiny_run: Path, tmp_path: Path) -> None:
    from .conftest import one_error_line

    marker = tmp_path / "marker.txt"
    run = crafted_copy(tiny_run, tmp_path, marker, "best.pt")
    line = one_error_line(cli("eval", run))
    assert "best.pt is not a flexsample checkpoint" in line
    assert not marker.exists()


def test_resume_refuses_crafted_checkpoints(cli, tiny_run: Path, tmp_path: Path) -> None:
    from .conftest import one_error_line

    marker = tmp_path / "marker.txt"
    run = crafted_copy(tiny_run, tmp_path, marker, "checkpoint.pt", "checkpoint.prev.pt")
    (run / "results.json").unlink()  # an unfinished run
    line = one_error_line(cli("run", "--resume", "--out", run, "--quiet"))
    assert "checkpoint.pt is damaged" in line and "checkpoint.prev.pt is damaged" in line
    assert "--overwrite" in line
    assert not marker.exists()
