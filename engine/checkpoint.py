"""Safe, atomic checkpoint files.

Safety: checkpoints are read with `torch.load(weights_only=True)`, which never runs code from
the file (a crafted pickle is refused, not executed). State dicts may hold things that loader
does not accept (NumPy arrays and scalars, NumPy generators, dataclasses, paths); `save_atomic`
encodes them into tensors and plain containers tagged with `TAG`, adds `format_version`, and
`load_checkpoint` decodes them back, so every `state_dict` / `load_state_dict` pair works
unchanged and a plain `torch.load("best.pt")` works for users (model weights stay a plain
state dict of tensors under "model").

Atomicity: the file is written to a temporary file beside it, fsynced, then renamed into
place, so a crash mid-write leaves the previous file intact. `rotate=True` keeps the one
before as `<name>.prev.pt`. A crash between the two renames of a rotation leaves the previous
checkpoint as `.prev.pt` and the new one as a complete temporary file; `recover_checkpoint`
resumes from the best of what is there and says which file it used.

Fault points (`engine.faults`): `checkpoint-write` (temporary file half written),
`checkpoint-rename` (temporary file complete, before any rename), `checkpoint-rotate` (between
the two renames). They fire for every `save_atomic` call, best.pt included.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import io
import os
import pathlib
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from .errors import FlexsampleError
from .faults import fault_point
from .interrupts import deferred_interrupts

FORMAT_VERSION = 1
TAG = "__flexsample__"  # marks an encoded value: {TAG: kind, ...}
_ROOT = "__flexsample_root__"  # a non-dict object saved at the top level

# NumPy dtypes that map one-to-one to a torch dtype: stored as a real tensor (readable by users)
_NATIVE = {
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_PLAIN_KEYS = (str, int, float, bool, type(None))


# -- encoding ------------------------------------------------------------------------------
def encode_state(obj: Any, where: str = "state") -> Any:
    """`obj` with every value `torch.load(weights_only=True)` refuses replaced by a tagged dict.

    Raises FlexsampleError naming the key path for a value that cannot be stored safely.
    """
    if obj is None or type(obj) in (str, bytes, bool, int, float):  # not subclasses: np.float64
        return obj
    if isinstance(obj, torch.Tensor | torch.device | torch.dtype | torch.Size):
        return obj
    if isinstance(obj, _NUMPY_TYPES):
        return _encode_numpy(obj, where)
    if isinstance(obj, pathlib.PurePath):
        return {TAG: "path", "value": str(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _encode_dataclass(obj, where)
    if isinstance(obj, dict):
        return _encode_dict(obj, where)
    if isinstance(obj, list):
        return [encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, set | frozenset):
        return {
            TAG: "frozenset" if isinstance(obj, frozenset) else "set",
            "items": [encode_state(v, f"{where} item") for v in obj],
        }
    raise FlexsampleError(
        f"cannot store {type(obj).__module__}.{type(obj).__qualname__} at {where} in a "
        "checkpoint; state_dict() may return tensors, NumPy arrays and scalars, numbers, "
        "strings, bytes, None, lists, tuples, sets, dicts and dataclasses of those"
    )


_NUMPY_TYPES = (
    np.generic,
    np.ndarray,
    np.random.Generator,
    np.random.BitGenerator,
    np.random.RandomState,
)


def _encode_numpy(obj: Any, where: str) -> dict[str, Any]:
    """A NumPy scalar, array, generator, bit generator or RandomState (`_NUMPY_TYPES`)."""
    if isinstance(obj, np.generic):
        return {TAG: "numpy-scalar", "array": _encode_array(np.asarray(obj), where)}
    if isinstance(obj, np.ndarray):
        return _encode_array(obj, where)
    if isinstance(obj, np.random.Generator):
        return {TAG: "numpy-generator", "bit_generator": _encode_bitgen(obj.bit_generator, where)}
    if isinstance(obj, np.random.BitGenerator):
        return _encode_bitgen(obj, where)
    return {TAG: "numpy-randomstate", "state": encode_state(obj.get_state(), where)}


def _encode_dataclass(obj: Any, where: str) -> dict[str, Any]:
    cls = type(obj)
    return {
        TAG: "dataclass",
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "fields": {
            f.name: encode_state(getattr(obj, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(obj)
        },
    }


def _encode_dict(obj: dict[Any, Any], where: str) -> dict[Any, Any]:
    """A dict or OrderedDict with plain keys stays one (`_metadata` kept); others are tagged."""
    if type(obj) not in (dict, OrderedDict):
        obj = dict(obj)
    if all(isinstance(k, _PLAIN_KEYS) for k in obj) and TAG not in obj:
        out = type(obj)((k, encode_state(v, f"{where}[{k!r}]")) for k, v in obj.items())
        return _keep_metadata(out, obj)
    return {
        TAG: "dict",
        "items": [
            [encode_state(k, f"{where} key"), encode_state(v, f"{where}[{k!r}]")]
            for k, v in obj.items()
        ],
    }


def _keep_metadata(out: dict[Any, Any], source: object) -> dict[Any, Any]:
    """`out`, with the `_metadata` attribute of `source` (nn.Module.state_dict() version info)."""
    meta = getattr(source, "_metadata", None)
    if meta is not None:
        # torch sets this attribute on the OrderedDict it returns; no type declares it
        cast(Any, out)._metadata = meta
    return out


def _encode_array(arr: np.ndarray, where: str) -> dict[str, Any]:
    if arr.dtype.hasobject:
        raise FlexsampleError(
            f"cannot store a NumPy object array at {where} in a checkpoint; use a numeric or "
            "string dtype"
        )
    arr = np.array(arr, copy=True, order="C")  # ascontiguousarray would make 0-d 1-d
    if arr.dtype.name in _NATIVE and arr.dtype.isnative:
        data = torch.from_numpy(arr)
    else:  # strings, unsigned wider than 8 bits, datetimes, non-native byte order: raw bytes
        data = torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.uint8)
    return {TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}


def _encode_bitgen(bg: np.random.BitGenerator, where: str) -> dict[str, Any]:
    name = type(bg).__name__
    if name not in _BIT_GENERATORS:
        raise FlexsampleError(
            f"cannot store bit generator {name} at {where}; accepted: {', '.join(_BIT_GENERATORS)}"
        )
    return {TAG: "numpy-bitgen", "name": name, "state": encode_state(bg.state, where)}


# -- decoding ------------------------------------------------------------------------------
def decode_state(obj: Any) -> Any:
    """The inverse of `encode_state`."""
    if isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind is None:
            out = type(obj)((k, decode_state(v)) for k, v in obj.items())
            return _keep_metadata(out, obj)
        return _decode_tagged(kind, obj)
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode_state(v) for v in obj)
    return obj


def _decode_tagged(kind: str, obj: dict[str, Any]) -> Any:
    decode = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decode is None:
        raise ValueError(f"unknown encoded kind {kind!r}")
    return decode(obj)


def _decode_ndarray(obj: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(obj["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    data, shape = obj["data"], [int(n) for n in obj["shape"]]
    if not isinstance(data, torch.Tensor):
        raise ValueError("array data is not a tensor")
    if dtype.name in _NATIVE and dtype.isnative:
        return data.numpy().astype(dtype, copy=False).reshape(shape)
    return np.frombuffer(data.numpy().tobytes(), dtype=dtype).reshape(shape).copy()


def _decode_bitgen(obj: dict[str, Any]) -> np.random.BitGenerator:
    if obj["name"] not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {obj['name']!r}")
    bg = getattr(np.random, obj["name"])()
    bg.state = decode_state(obj["state"])
    return bg


def _decode_randomstate(obj: dict[str, Any]) -> np.random.RandomState:
    rs = np.random.RandomState()
    rs.set_state(decode_state(obj["state"]))
    return rs


def _decode_dataclass(obj: dict[str, Any]) -> Any:
    cls = _dataclass_type(obj["class"])
    values = {k: decode_state(v) for k, v in obj["fields"].items()}
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    inst = cls(**{k: v for k, v in values.items() if k in init})
    for k, v in values.items():
        if k not in init:
            object.__setattr__(inst, k, v)
    return inst


def _decode_dict(obj: dict[str, Any]) -> dict[Any, Any]:
    return {_hashable(decode_state(k)): decode_state(v) for k, v in obj["items"]}


def _decode_items(obj: dict[str, Any]) -> list[Any]:
    return [_hashable(decode_state(v)) for v in obj["items"]]


# kind (the value under TAG) -> its decoder; the kinds are the checkpoint format: never rename one
_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ndarray": _decode_ndarray,
    "numpy-scalar": lambda obj: decode_state(obj["array"])[()],
    "numpy-bitgen": _decode_bitgen,
    "numpy-generator": lambda obj: np.random.Generator(decode_state(obj["bit_generator"])),
    "numpy-randomstate": _decode_randomstate,
    "path": lambda obj: Path(obj["value"]),
    "dataclass": _decode_dataclass,
    "dict": _decode_dict,
    "set": lambda obj: set(_decode_items(obj)),
    "frozenset": lambda obj: frozenset(_decode_items(obj)),
}


def _hashable(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _dataclass_type(name: str) -> type:
    """Only dataclasses of flexsample's own modules are rebuilt (importing runs no file data)."""
    module, _, qualname = name.partition(":")
    if module != "flexsample" and not module.startswith("flexsample."):
        raise ValueError(f"dataclass {name} is not a flexsample type")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name} is not a dataclass")
    return obj


# -- files ---------------------------------------------------------------------------------
class _FaultWriter:
    """A file wrapper that reaches the `checkpoint-write` fault point after the first chunk."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self.fh = fh
        self.reached = False

    def write(self, data: bytes) -> int:
        n = self.fh.write(data)
        if not self.reached:
            self.reached = True
            self.fh.flush()
            fault_point("checkpoint-write")
        return n

    def flush(self) -> None:
        self.fh.flush()


def _wrap(obj: Any) -> dict[str, Any]:
    encoded = encode_state(obj)
    if isinstance(encoded, dict) and TAG not in encoded and "format_version" not in encoded:
        out = _keep_metadata(type(encoded)(encoded), encoded)
        out["format_version"] = FORMAT_VERSION
        return out
    return {_ROOT: encoded, "format_version": FORMAT_VERSION}


def save_atomic(path: str | os.PathLike, obj: Any, rotate: bool = False) -> None:
    """Write `obj` safely to `path` (temp file, fsync, rename); keep `.prev.pt` with `rotate`.

    An OSError (full disk, read-only folder) becomes a FlexsampleError naming the file; the
    previous checkpoint is untouched and the temporary file is removed.
    """
    path = Path(path)
    payload = _wrap(obj)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path, ".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        # Ctrl-C and SIGTERM arrive after the checkpoint is in place: raised inside torch.save's
        # C++ writer they would become a RuntimeError or an abort (engine.interrupts)
        with deferred_interrupts():
            with os.fdopen(fd, "wb") as fh:
                # torch.save writes to any object with write(); its annotation says IO[bytes]
                torch.save(payload, cast(IO[bytes], _FaultWriter(fh)))
                fh.flush()
                os.fsync(fh.fileno())
            fault_point("checkpoint-rename")
            if rotate and path.exists():
                os.replace(path, prev_path(path))
                fault_point("checkpoint-rotate")
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        os_error = _os_error(exc)
        if os_error is not None:
            raise _write_error(path, os_error) from os_error
        raise


def temp_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """A temporary file `.<name>.<random><suffix>` next to `path`, with the mode a plain new
    file would get (mkstemp makes 0600; every output of a run honours the umask instead)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (torch may wrap a failed write in a RuntimeError)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(path: Path, exc: OSError) -> FlexsampleError:
    cause = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        cause = "no space left on device"
    kept = " (the previous one is kept)" if path.exists() or prev_path(path).exists() else ""
    return FlexsampleError(
        f"cannot write checkpoint {path}: {cause}{kept}; fix that (free space, permissions), "
        "then continue the run with --resume"
    )


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def temp_paths(path: Path) -> list[Path]:
    """Temporary files `save_atomic` may have left beside `path` (newest first)."""
    found = [p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by `save_atomic`, never running code from the file.

    Anything else (a crafted pickle, garbage, a truncated file, a torch file without
    `format_version`) raises a one-line FlexsampleError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FlexsampleError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; the error says enough
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unusable(path, _short(exc)) from None
    if not isinstance(raw, dict) or "format_version" not in raw:
        raise _unusable(path, "no format_version: not written by this version of flexsample")
    version = raw["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise _unusable(
            path,
            f"checkpoint format {version!r}; this flexsample reads formats up to "
            f"{FORMAT_VERSION}, upgrade it",
        )
    try:
        state = decode_state({k: v for k, v in raw.items() if k != "format_version"})
    except Exception as exc:
        raise _unusable(path, _short(exc)) from None
    return state[_ROOT] if _ROOT in state else state


def _unusable(path: Path, reason: str) -> FlexsampleError:
    exc = FlexsampleError(f"{path} is not a flexsample checkpoint or is damaged ({reason})")
    cast(Any, exc).reason = reason  # read by _reason: recover_checkpoint words it shorter
    return exc


def _short(exc: BaseException) -> str:
    """The gist of an exception message on one short line: error messages stay one line."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):  # torch's refusal: keep only its reason
        reasons = [
            ln.strip().removeprefix("WeightsUnpickler error: ")
            for ln in text.splitlines()[1:]
            if ln.strip()
            and not ln.lstrip().startswith(("(1)", "(2)", "Check the documentation"))
            and "weights_only" not in ln
        ]
        reason = reasons[0] if reasons else "a global that is not allowed"
        reason = reason.split(" was not an allowed global")[0].split(". Please")[0]
        return f"refused to load: {reason[:120]}"
    lines = text.splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _try_load(path: Path, problems: list[str] | None) -> Any:
    """The checkpoint at `path`, or None (adding why to `problems` when given)."""
    if not path.exists():
        if problems is not None:
            problems.append(f"{path.name} is missing")
        return None
    try:
        return load_checkpoint(path)
    except FlexsampleError as exc:
        if problems is not None:
            problems.append(f"{path.name} is damaged ({_reason(exc)})")
        return None


def recover_checkpoint(path: str | os.PathLike) -> tuple[Any, str]:
    """The newest usable state among `path`, complete temp files and `<name>.prev.pt`.

    Returns `(state, sentence)`, the sentence saying which file was used and why (for the
    user). Order: `path` if it loads; else a complete temporary file left by a crash before
    its rename (it is moved into place); else the previous checkpoint (a damaged `path` is
    moved aside to `<name>.damaged.pt` so the next rotation keeps the good previous one).
    Stale temporary files are removed. Raises FlexsampleError when nothing is usable.
    """
    path = Path(path)
    problems: list[str] = []
    state: Any = None
    used: Path | None = None
    temps = temp_paths(path) if path.parent.is_dir() else []
    for candidate, say in [(path, True), *((t, False) for t in temps), (prev_path(path), True)]:
        loaded = _try_load(candidate, problems if say else None)
        if loaded is not None:
            state, used = loaded, candidate
            break
    if used is None:
        raise FlexsampleError(
            f"no usable checkpoint in {path.parent}: {'; '.join(problems)}; pass --overwrite "
            "to start the run again"
        )
    epoch = state.get("epoch") if isinstance(state, dict) else None
    at = f" (epoch {epoch})" if isinstance(epoch, int) else ""
    if used == path:
        sentence = f"resuming from {path.name}{at}"
    elif used in temps:
        if path.exists():
            os.replace(path, path.with_name(path.stem + ".damaged" + path.suffix))
        os.replace(used, path)
        sentence = (
            f"{'; '.join(problems)}; resuming from the complete checkpoint a crash left before "
            f"its rename ({used.name}, now {path.name}){at}"
        )
    else:
        sentence = f"{'; '.join(problems)}; resuming from {used.name}{at}"
        if path.exists():
            damaged = path.with_name(path.stem + ".damaged" + path.suffix)
            os.replace(path, damaged)
            sentence += f" (the damaged file is kept as {damaged.name})"
    for tmp in temps:
        tmp.unlink(missing_ok=True)
    return state, sentence


def _reason(exc: FlexsampleError) -> str:
    return getattr(exc, "reason", str(exc))
