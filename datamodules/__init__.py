"""LightningDataModules: whole datasets in memory, fixed or dynamic binarization."""

from datamodules.base import BinarizedDataModule, DataSplits, MinibatchIterable
from datamodules.binarized_mnist import BinarizedMNISTDataModule
from datamodules.fashion_mnist import FashionMNISTDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.mnist_subset import MNISTSubsetDataModule
from datamodules.omniglot import OmniglotDataModule
from datamodules.user_data import FolderDataModule, NpzDataModule

__all__ = [
    "BinarizedDataModule",
    "DataSplits",
    "MinibatchIterable",
    "MNISTSubsetDataModule",
    "MNISTDataModule",
    "BinarizedMNISTDataModule",
    "OmniglotDataModule",
    "FashionMNISTDataModule",
    "NpzDataModule",
    "FolderDataModule",
]
