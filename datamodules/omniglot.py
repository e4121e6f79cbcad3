"""The 28x28 Omniglot of Burda et al. (``chardata.mat``), with the paper code's split."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.base import DataSplits
from datamodules.download import RemoteFile
from datamodules.file_backed import FileDataModule
from datamodules.formats import read_omniglot_mat
from iwae.errors import UserError, check_positive_int


class OmniglotDataModule(FileDataModule):
    """Omniglot characters whose pixel values are Bernoulli probabilities.

    24,345 training images, of which ``n_validation`` = 1,345 are held out as the paper's code
    does it: shuffle with ``numpy.random.RandomState(123).permutation`` and keep the last 1,345
    for validation; 8,070 test images.

    No public source publishes a checksum of ``chardata.mat``: the download is used with a
    warning that prints its SHA-256, which ``data.checksums`` can pin.
    """

    name = "omniglot"
    subdir = "omniglot"
    default_base_url = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT"
    files = (RemoteFile("chardata.mat"),)
    PAPER_SHUFFLE_SEED = 123  # `binarized_shuffled_omniglot` in yburda/iwae's datasets.py

    def __init__(self, n_validation: int = 1345, **kw) -> None:
        super().__init__(**kw)
        self.n_validation = check_positive_int("data.n_validation", n_validation)

    def load_splits(self) -> DataSplits:
        path = self.fetch_files()["chardata.mat"]
        train_val, test = read_omniglot_mat(path)
        if self.n_validation >= len(train_val):
            raise UserError(
                f"{self.name}: data.n_validation={self.n_validation} leaves no training images "
                f"of the {len(train_val)} in {path}; lower data.n_validation"
            )
        order = np.random.RandomState(self.PAPER_SHUFFLE_SEED).permutation(len(train_val))
        x = torch.from_numpy(train_val[order])
        cut = len(x) - self.n_validation
        splits = DataSplits(x[:cut], x[cut:], torch.from_numpy(test), image_shape=(28, 28))
        return self.trim(splits)
