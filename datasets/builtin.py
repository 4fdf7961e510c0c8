"""Importing this module registers the built-in datasets in `DATASETS`."""

from . import datalist, digits, imagefolder, isic, synthetic  # noqa: F401
