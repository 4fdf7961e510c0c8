"""Load the ISIC split manifests without trusting them.

`dic.npy` is a pickled dict inside an .npy file. `np.load(allow_pickle=True)` would let a
crafted file run any code, so `load_label_dict` reads the .npy header itself and unpickles the
payload with a restricted unpickler: the only globals it resolves are NumPy's array
reconstruction, `ndarray` (as an inert token), `dtype` (object, unicode and integer kinds only)
and the scalar constructor (unicode and integer scalars only). Everything else — `os.system`,
`builtins.eval`, any other NumPy function — is refused with a `FlexsampleError` before it is
called, so nothing in the file is ever executed. The name arrays (`train*.npy`, ...) are plain
unicode arrays and load with `allow_pickle=False`.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from flexsample.engine.errors import FlexsampleError

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_DTYPE_NAME = re.compile(r"^(O[48]?|[<>|=]?U[0-9]{1,4}|[<>|=]?[iu][1248]|u?int(8|16|32|64))$")
_MAX_SCALAR_BYTES = 4096


class _NdarrayToken:
    """Stands in for `numpy.ndarray` in the pickle: only `_reconstruct` accepts it."""


_NDARRAY = _NdarrayToken()


class UnsafePickleError(FlexsampleError):
    """The file asks for something outside the admitted types; nothing was executed."""


def _refuse(path: Path, what: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{path}: refused to load, the pickle asks for {what}; only a dict of str -> int "
        "(with NumPy string/integer scalars) is admitted, nothing was executed"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        path = self._path
        if module in _MULTIARRAY and name == "_reconstruct":

            def reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
                if subtype is not _NDARRAY or shape != (0,) or dtype_code not in (b"b", "b"):
                    raise _refuse(path, "an array reconstruction with unexpected arguments")
                return np.ndarray((0,), dtype="b")

            return reconstruct
        if module == "numpy" and name == "ndarray":
            return _NDARRAY
        if module == "numpy" and name == "dtype":

            def dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
                if not isinstance(spec, str) or not _DTYPE_NAME.match(spec):
                    raise _refuse(path, f"dtype {spec!r}")
                return np.dtype(spec)

            return dtype
        if module in _MULTIARRAY and name == "scalar":

            def scalar(dt: Any, data: Any = None) -> Any:
                if not isinstance(dt, np.dtype) or dt.kind not in "Uiu":
                    raise _refuse(path, f"a NumPy scalar of dtype {dt!r}")
                if not isinstance(data, bytes) or len(data) > _MAX_SCALAR_BYTES:
                    raise _refuse(path, "a NumPy scalar with unexpected data")
                if len(data) != dt.itemsize:
                    raise _refuse(path, "a NumPy scalar whose data does not match its dtype")
                return np.frombuffer(data, dtype=dt)[0]

            return scalar
        raise _refuse(path, f"the global '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse(self._path, "a persistent id")


def _read_npy_header(f: io.BufferedIOBase, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise FlexsampleError(f"{path}: not a NumPy .npy file ({exc})") from None
    raise FlexsampleError(f"{path}: unsupported .npy format version {version}")


def load_label_dict(path: str | Path) -> dict[str, int]:
    """Read a `dic.npy` (image name -> label) safely; FlexsampleError if it is anything else."""
    path = Path(path)
    if not path.is_file():
        raise FlexsampleError(f"label file not found: {path}")
    with open(path, "rb") as f:
        shape, _fortran, dtype = _read_npy_header(f, path)
        if dtype != np.dtype(object) or shape != ():
            raise FlexsampleError(
                f"{path}: expected a pickled dict (0-d object array), found shape {shape} "
                f"dtype {dtype}"
            )
        try:
            obj = _RestrictedUnpickler(f, path).load()
        except FlexsampleError:
            raise
        except Exception as exc:  # malformed stream: a clear one-line error, not a traceback
            raise FlexsampleError(
                f"{path}: cannot read the pickled label dict ({type(exc).__name__}: {exc})"
            ) from None
    if isinstance(obj, np.ndarray):
        if obj.shape != () or obj.dtype != object:
            raise FlexsampleError(f"{path}: expected a 0-d object array, found {obj.shape}")
        obj = obj[()]
    if not isinstance(obj, dict):
        raise FlexsampleError(
            f"{path}: expected a dict of image name -> label, found {type(obj).__name__}"
        )
    out: dict[str, int] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise FlexsampleError(f"{path}: a key is not a file name: {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise FlexsampleError(f"{path}: label of '{key}' is not an integer: {value!r}")
        out[str(key)] = int(value)
    return out


def load_name_array(path: str | Path) -> list[str]:
    """Read a split manifest (1-d unicode array of image names) without pickle."""
    path = Path(path)
    if not path.is_file():
        raise FlexsampleError(f"split file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FlexsampleError(f"{path}: not a plain array of image names ({exc})") from None
    except OSError as exc:
        raise FlexsampleError(f"{path}: cannot read ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "US":
        raise FlexsampleError(
            f"{path}: expected a 1-d array of image names, found shape "
            f"{getattr(arr, 'shape', '?')} dtype {getattr(arr, 'dtype', '?')}"
        )
    if arr.dtype.kind == "S":
        return [s.decode("utf-8") for s in arr.tolist()]
    return [str(s) for s in arr.tolist()]


def save_label_dict(path: str | Path, mapping: dict[str, int]) -> None:
    """Write `dic.npy` in the official format (a 0-d object array holding a dict)."""
    arr = np.empty((), dtype=object)
    arr[()] = {str(k): int(v) for k, v in mapping.items()}
    np.save(Path(path), arr, allow_pickle=True)


def save_name_array(path: str | Path, names: list[str]) -> None:
    """Write a split manifest as a 1-d '<U28' (or wider) array, as the official files are."""
    width = max([28, *(len(n) for n in names)])
    np.save(Path(path), np.array(names, dtype=f"<U{width}"), allow_pickle=False)
