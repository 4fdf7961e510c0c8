"""Datasets: embedded `digits-lt`, generated, ISIC and image folders; split protocols.

Names are imported from their submodules on first use (PEP 562), so the split tools
(`profiles`, `splits`) and the command line start without torch. The built-in datasets
register when `DATASETS` is first looked up (it imports `flexsample.datasets.builtin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flexsample._lazy import lazy_exports

if TYPE_CHECKING:
    from .base import (
        DATASETS,
        LTDataset,
        Split,
        build_dataset,
        exponential_profile,
        groups_by_count,
    )
    from .images import DecodedCache, ImageSplit, dataloader_options
    from .safe_load import load_label_dict, load_name_array
    from .splits import generate_splits

_SOURCES: dict[str, tuple[str, ...]] = {
    ".base": (
        "DATASETS",
        "LTDataset",
        "Split",
        "build_dataset",
        "exponential_profile",
        "groups_by_count",
    ),
    ".images": ("DecodedCache", "ImageSplit", "dataloader_options"),
    ".safe_load": ("load_label_dict", "load_name_array"),
    ".splits": ("generate_splits",),
}

__all__ = [
    "DATASETS",
    "LTDataset",
    "Split",
    "build_dataset",
    "exponential_profile",
    "groups_by_count",
    "DecodedCache",
    "ImageSplit",
    "dataloader_options",
    "load_label_dict",
    "load_name_array",
    "generate_splits",
]


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
