"""LightningDataModules: whole datasets in memory, fixed or dynamic binarization.

The classes load on first use (PEP 562): ``datamodules.MNISTDataModule`` (the configs'
``_target_``) imports Lightning, while ``import datamodules.formats`` (file readers only) does
not.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "BinarizedDataModule": "base",
    "DataSplits": "base",
    "MinibatchIterable": "base",
    "MNISTSubsetDataModule": "mnist_subset",
    "MNISTDataModule": "mnist",
    "BinarizedMNISTDataModule": "binarized_mnist",
    "OmniglotDataModule": "omniglot",
    "FashionMNISTDataModule": "fashion_mnist",
    "NpzDataModule": "user_data",
    "FolderDataModule": "user_data",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(importlib.import_module(f"datamodules.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
