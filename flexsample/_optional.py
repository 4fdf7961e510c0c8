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
