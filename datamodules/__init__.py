"""LightningDataModules: whole datasets in memory, fixed or dynamic binarization."""

from datamodules.base import BinarizedDataModule, DataSplits, MinibatchIterable
from datamodules.mnist_subset import MNISTSubsetDataModule

__all__ = ["BinarizedDataModule", "DataSplits", "MinibatchIterable", "MNISTSubsetDataModule"]
