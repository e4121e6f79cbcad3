"""Fashion-MNIST (Xiao et al. 2017): MNIST's format and sizes, clothes instead of digits."""

from __future__ import annotations

from datamodules.download import RemoteFile
from datamodules.mnist import MNISTDataModule


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST, split like the paper's MNIST (the last 400 training images validate).

    Debian's ``dataset-fashion-mnist`` package installs the same IDX files under
    ``/usr/share/datasets/fashion-mnist/``; they are used when present, without a download.
    Debian recompressed them, so their bytes (not their images) differ from upstream's and the
    upstream checksum is not applied to them: apt verified the package.
    """

    name = "fashion_mnist"
    subdir = "fashion_mnist"
    torchvision_dir = "FashionMNIST"
    default_base_url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
    trusted_dirs = ("/usr/share/datasets/fashion-mnist",)
    # SHA-256 from tensorflow/datasets' url_checksums/fashion_mnist.txt; MD5 from torchvision's
    # `FashionMNIST.resources`.
    files = (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            md5="bef4ecab320f06d8554ea6380940ec79",
        ),
    )
