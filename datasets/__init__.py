"""Datasets: embedded `digits-lt`, generated, ISIC and image folders; split protocols."""

from . import digits, imagefolder, isic, synthetic  # noqa: F401  (register the datasets)
from .base import DATASETS, LTDataset, Split, build_dataset, exponential_profile, groups_by_count
from .images import DecodedCache, ImageSplit, dataloader_options
from .safe_load import load_label_dict, load_name_array
from .splits import generate_splits

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
