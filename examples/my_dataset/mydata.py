"""A dataset of one's own, in one file outside the package: the bars problem (Foldiak 1990),
28 x 28 images of random horizontal and vertical bars, made on the fly (nothing to download).

A data module names itself (``name``, the data column of the reports) and returns its three
splits of pixel values in [0, 1]; `datamodules.base.BinarizedDataModule` does the rest:
fixed or dynamic binarization, the one binarization of the test set every evaluation scores,
batches, and the exact resume of a run mid-epoch.

    PYTHONPATH=examples/my_dataset python train.py plugins=[mydata] data=bars \
        hydra.searchpath=[file://examples/my_dataset/conf]
"""

import torch

from datamodules.base import BinarizedDataModule, DataSplits, split_rows

SIDE = 28
BAR = 4  # pixels a bar is wide: 7 horizontal and 7 vertical bar positions


class BarsDataModule(BinarizedDataModule):
    name = "bars"

    def __init__(
        self, images: int = 3000, split=(2000, 500, 500), p: float = 0.15, split_seed=0, **kw
    ) -> None:
        super().__init__(**kw)
        self.images, self.split, self.p, self.split_seed = images, tuple(split), p, split_seed

    def load_splits(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.split_seed)
        rows = torch.rand(self.images, SIDE // BAR, generator=g) < self.p
        cols = torch.rand(self.images, SIDE // BAR, generator=g) < self.p
        rows = rows.repeat_interleave(BAR, 1)[:, :, None]  # [N, 28, 1]
        cols = cols.repeat_interleave(BAR, 1)[:, None, :]  # [N, 1, 28]
        on = (rows | cols).float()
        pixels = 0.05 + 0.9 * on  # grey levels: dynamic binarization draws a fresh image
        train, val, test = split_rows(pixels.reshape(self.images, -1), self.split, 0, self.name)
        return DataSplits(train, val, test, image_shape=(SIDE, SIDE))
