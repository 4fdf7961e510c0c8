"""Optional dependencies: imported where a feature needs them, one clear line when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from flexsample.engine.errors import FlexsampleError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise one FlexsampleError line naming the extra.

    >>> ray = require("ray", "cluster", "--launcher ray")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name not in (None, top, module) and not module.startswith(str(exc.name)):
            raise  # the package is there but one of its own imports is broken: show that
        raise FlexsampleError(
            f"{feature} needs the optional package '{top}', which is not installed; "
            f"install it with: pip install 'flexsample[{extra}]'"
        ) from None


def check_torch_pair() -> None:
    """Import torchvision, or say in one line that it does not match torch and how to fix it.

    A CPU torch with a CUDA torchvision (or versions of different releases) fails inside
    torchvision's import with "operator torchvision::nms does not exist": true, but it names
    neither the cause nor the cure.
    """
    try:
        importlib.import_module("torchvision")
    except (RuntimeError, ImportError, OSError) as exc:
        text = " ".join(str(exc).split())
        if isinstance(exc, ImportError) and exc.name == "torchvision":
            raise FlexsampleError(
                "torchvision is not installed; install it with torch: pip install torch torchvision"
            ) from None
        torch = importlib.import_module("torch")
        version = str(torch.__version__)
        raise FlexsampleError(
            f"torchvision {_installed('torchvision')} does not work with torch {version} "
            f"({text[:160]}): they come from different builds (a CPU torch with a CUDA "
            f"torchvision, or two releases); reinstall them as a pair: {_pair_command(version)}"
        ) from None


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(version unknown)"


def _pair_command(torch_version: str) -> str:
    """The pip command that installs the torchvision built for this torch."""
    local = torch_version.partition("+")[2]  # 'cpu', 'cu121', '' for PyPI's default build
    if local:
        return (
            f'pip install --force-reinstall "torch=={torch_version}" torchvision '
            f"--index-url https://download.pytorch.org/whl/{local}"
        )
    return f'pip install --force-reinstall "torch=={torch_version}" torchvision'
