"""dic.npy loads through a restricted unpickler: the real files load, crafted ones run nothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from flexsample.datasets.safe_load import (
    UnsafePickleError,
    load_label_dict,
    load_name_array,
    save_label_dict,
    save_name_array,
)
from flexsample.engine.errors import FlexsampleError

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "isic-splits"
needs_splits = pytest.mark.skipif(
    not (SPLITS / "8-class" / "dic.npy").is_file(),
    reason=f"ISIC split manifests not found at {SPLITS} (shared data folder absent)",
)


def _npy_with_payload(path: Path, payload: bytes) -> Path:
    """A valid .npy header for a 0-d object array followed by an arbitrary pickle stream."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        f.write(payload)
    return path


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@needs_splits
@pytest.mark.parametrize(
    "sub, n, key_sample",
    [
        ("8-class", 25331, "ISIC_0000000.jpg"),
        ("14-class", 25020, "ISIC_0062513.jpg"),
    ],
)
def test_real_label_files_load(sub: str, n: int, key_sample: str) -> None:
    labels = load_label_dict(SPLITS / sub / "dic.npy")
    assert len(labels) == n
    assert all(type(k) is str for k in labels)  # numpy.str_ keys become plain str
    assert all(type(v) is int for v in labels.values())
    assert key_sample in labels
    reference = np.load(SPLITS / sub / "dic.npy", allow_pickle=True).item()  # trusted copy
    assert labels == {str(k): int(v) for k, v in reference.items()}


@needs_splits
def test_name_arrays_load_without_pickle() -> None:
    names = load_name_array(SPLITS / "8-class" / "train_100.npy")
    assert len(names) == 10322 and all(isinstance(n, str) for n in names)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "dic.npy"
    np.save(bad, np.array(_RunsCode(marker), dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"system"):
        load_label_dict(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("os", "system"),
        ("subprocess", "Popen"),
        ("numpy", "load"),
        ("numpy.testing._private.utils", "runstring"),
    ],
)
def test_any_other_global_is_refused(tmp_path: Path, module: str, name: str) -> None:
    payload = (
        b"\x80\x03c"
        + module.encode()
        + b"\n"
        + name.encode()
        + b"\n"
        + b"X\x0b\x00\x00\x00print('hi')\x85R."
    )
    path = _npy_with_payload(tmp_path / "dic.npy", payload)
    with pytest.raises(FlexsampleError, match=rf"refused.*{name}"):
        load_label_dict(path)


def test_refuses_ndarray_called_directly(tmp_path: Path) -> None:
    """ndarray is only a token for _reconstruct: calling it (a huge allocation) is refused."""
    payload = b"\x80\x03cnumpy\nndarray\nJ\x00\xe1\xf5\x05\x85\x85R."
    path = _npy_with_payload(tmp_path / "dic.npy", payload)
    with pytest.raises(FlexsampleError):
        load_label_dict(path)


def test_refuses_object_scalars_and_odd_dtypes(tmp_path: Path) -> None:
    payload = b"\x80\x03cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R."
    path = _npy_with_payload(tmp_path / "dic.npy", payload)
    with pytest.raises(FlexsampleError, match="dtype"):
        load_label_dict(path)


def test_roundtrip_and_type_checks(tmp_path: Path) -> None:
    p = tmp_path / "dic.npy"
    save_label_dict(p, {"a.jpg": 1, "b.jpg": 0})
    assert load_label_dict(p) == {"a.jpg": 1, "b.jpg": 0}
    # numpy scalars as keys and values (the 14-class file's style) are admitted
    arr = np.empty((), dtype=object)
    arr[()] = {np.str_("c.jpg"): np.int64(3)}
    np.save(p, arr, allow_pickle=True)
    assert load_label_dict(p) == {"c.jpg": 3}
    # a dict with a non-integer label is refused by value
    arr[()] = {"d.jpg": "melanoma"}
    np.save(p, arr, allow_pickle=True)
    with pytest.raises(FlexsampleError, match="d.jpg"):
        load_label_dict(p)
    # a plain pickle (not an .npy) and a non-dict payload are refused
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FlexsampleError, match="not a NumPy"):
        load_label_dict(p)
    np.save(p, np.arange(3))
    with pytest.raises(FlexsampleError, match="expected a pickled dict"):
        load_label_dict(p)
    with pytest.raises(FlexsampleError, match="not found"):
        load_label_dict(tmp_path / "absent.npy")


def test_name_array_rejects_pickled_objects(tmp_path: Path) -> None:
    p = tmp_path / "train_100.npy"
    np.save(p, np.array(["a.jpg", None], dtype=object), allow_pickle=True)
    with pytest.raises(FlexsampleError, match="not a plain array"):
        load_name_array(p)
    save_name_array(p, ["ISIC_0000000.jpg"])
    assert np.load(p).dtype == np.dtype("<U28")
    assert load_name_array(p) == ["ISIC_0000000.jpg"]
