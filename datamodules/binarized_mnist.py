"""Larochelle & Murray's (2011) fixed binarization of MNIST, the literature's usual benchmark."""

from __future__ import annotations

import logging

import torch

from datamodules.base import DataSplits
from datamodules.download import RemoteFile
from datamodules.file_backed import FileDataModule
from datamodules.formats import read_amat

log = logging.getLogger(__name__)


class BinarizedMNISTDataModule(FileDataModule):
    """The ``binarized_mnist_{train,valid,test}.amat`` files: 50,000 / 10,000 / 10,000 images.

    The files hold one binarization of their own, used as it is: ``binarization=fixed`` is the
    only meaningful setting (``dynamic`` is accepted, warned about, and changes nothing, since
    a Bernoulli sample of 0/1 values is the values themselves).
    """

    name = "binarized_mnist"
    subdir = "binarized_mnist"
    default_base_url = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
    # SHA-256 from tensorflow/datasets' url_checksums/binarized_mnist.txt.
    files = (
        RemoteFile(
            "binarized_mnist_train.amat",
            sha256="ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        ),
        RemoteFile(
            "binarized_mnist_valid.amat",
            sha256="1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        ),
        RemoteFile(
            "binarized_mnist_test.amat",
            sha256="e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        ),
    )

    def __init__(self, binarization: str = "fixed", **kw) -> None:
        super().__init__(binarization=binarization, **kw)

    def load_splits(self) -> DataSplits:
        if self.binarization == "dynamic":
            log.warning(
                "binarized_mnist holds a fixed binarization of its own: data.binarization="
                "dynamic changes nothing (use data=mnist for the paper's dynamic binarization)"
            )
        paths = self.fetch_files()
        train, val, test = (torch.from_numpy(read_amat(paths[f.name])) for f in self.files)
        splits = DataSplits(train, val, test, image_shape=(28, 28), prebinarized=True)
        return self.trim(splits)
