"""The 70,000 MNIST digits from LeCun's IDX files, split as in the paper's code."""

from __future__ import annotations

import torch

from datamodules.base import DataSplits
from datamodules.download import RemoteFile
from datamodules.file_backed import FileDataModule
from datamodules.formats import read_idx_images
from iwae.errors import UserError, check_positive_int


class MNISTDataModule(FileDataModule):
    """MNIST intensities / 255 as Bernoulli probabilities (the paper's dynamic binarization).

    The paper's code keeps the first 59,600 images of the training file for training and the
    last ``n_validation`` = 400 for validation, unshuffled; the test split is the 10,000 test
    images. Only the image files are read: the model is unsupervised.

    Args:
        n_validation: images at the end of the training file held out for validation.
        **kw: `FileDataModule`'s and `BinarizedDataModule`'s arguments.
    """

    name = "mnist"
    subdir = "mnist"
    torchvision_dir = "MNIST"
    # torchvision's first mirror (its `MNIST.mirrors`); yann.lecun.com often refuses downloads.
    default_base_url = "https://ossci-datasets.s3.amazonaws.com/mnist"
    # SHA-256 as published in tensorflow/datasets' url_checksums/mnist.txt; MD5 as published in
    # torchvision's `MNIST.resources`. Both describe LeCun's original .gz files.
    files = (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            md5="9fb629c4189551a2d022fa330f9573f3",
        ),
    )

    def __init__(self, n_validation: int = 400, **kw) -> None:
        super().__init__(**kw)
        self.n_validation = check_positive_int("data.n_validation", n_validation)

    def load_splits(self) -> DataSplits:
        paths = self.fetch_files()
        train_file, test_file = (paths[f.name] for f in self.files)
        train_val, shape = read_idx_images(train_file)
        test, test_shape = read_idx_images(test_file)
        if test_shape != shape:
            raise UserError(f"{test_file}: images are {test_shape}, but {train_file}'s are {shape}")
        if self.n_validation >= len(train_val):
            raise UserError(
                f"{self.name}: data.n_validation={self.n_validation} leaves no training images "
                f"of the {len(train_val)} in {train_file}; lower data.n_validation"
            )
        x = torch.from_numpy(train_val)
        cut = len(x) - self.n_validation
        splits = DataSplits(x[:cut], x[cut:], torch.from_numpy(test), image_shape=shape)
        return self.trim(splits)
