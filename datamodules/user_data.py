"""A user's own images: an ``.npz`` array file or a folder of image files, values in [0, 1]."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.base import BinarizedDataModule, DataSplits, split_rows
from datamodules.formats import IMAGE_SUFFIXES, read_image_folder, read_npz
from iwae.errors import UserError

SPLITS = ("train", "val", "test")


class UserDataModule(BinarizedDataModule):
    """Shared logic: a source with its own train/val/test, or one pool cut by ``split``.

    Args:
        path: the ``.npz`` file or image folder; a relative path is made absolute from the
            working directory at once, and every checkpoint stores it with the data's SHA-256
            (`state_dict`), so ``mode=eval`` scores the same bytes from any directory.
        split: ``[n_train, n_val, n_test]`` for a source with one pool of images, shuffled
            with ``split_seed`` before it is cut; must be null for a source with its own splits.
        split_seed: seed of that shuffle, apart from ``seed`` so every run sees one split.
        image_shape: ``[H, W]`` of flat ``[N, D]`` rows (``H * W = D``), so that samples are
            drawn as images; null takes the source's shape (rows of a square ``D`` are drawn
            as ``sqrt(D) x sqrt(D)`` images, others get no sample grid).
        **kw: `BinarizedDataModule`'s arguments.
    """

    def __init__(
        self,
        path: str | None = None,
        split: Sequence[int] | None = None,
        split_seed: int = 0,
        image_shape: Sequence[int] | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if not path:
            raise UserError(f"data={self.name} needs data.path=<your file or folder>")
        self.path = Path(path).expanduser().absolute()
        self.data_sha256: str | None = None  # of the bytes read, set by `load_splits`
        self.split = None if split is None else [int(n) for n in split]
        self.split_seed = split_seed
        if self.split is not None and len(self.split) != 3:
            raise UserError(f"data.split must be [n_train, n_val, n_test], got {split}")
        self.given_shape = _image_shape(image_shape)

    def load_splits(self) -> DataSplits:
        splits = self._load_splits()
        if self.given_shape is None:
            return splits
        dim = math.prod(splits.image_shape)
        if math.prod(self.given_shape) != dim:
            raise UserError(
                f"data.image_shape={list(self.given_shape)} holds "
                f"{math.prod(self.given_shape)} pixels, but {self.path.name}'s images have {dim} "
                f"(shape {list(splits.image_shape)}); give [H, W] with H * W = {dim}, or drop it"
            )
        splits.image_shape = self.given_shape
        return splits

    def read(self) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
        """``({"train"/"val"/"test" or "all": [N, D] float32 in [0, 1]}, image_shape)``."""
        raise NotImplementedError

    def _load_splits(self) -> DataSplits:
        if not self.path.exists():
            raise UserError(f"data.path {self.path} does not exist")
        self.data_sha256 = data_digest(self.path)
        arrays, shape = self.read()
        if "all" in arrays:
            if self.split is None:
                raise UserError(
                    f"{self.path} holds one pool of {len(arrays['all'])} images: set "
                    "data.split=[n_train,n_val,n_test] to divide it"
                )
            parts = split_rows(
                torch.from_numpy(arrays["all"]), self.split, self.split_seed, self.name
            )
            return DataSplits(*parts, image_shape=shape)
        missing = [s for s in SPLITS if s not in arrays]
        if missing:
            raise UserError(
                f"{self.path}: found {sorted(arrays)} but no {', '.join(missing)} split"
            )
        if self.split is not None:
            raise UserError(
                f"{self.path} has its own train/val/test splits; remove data.split={self.split}"
            )
        return DataSplits(*(torch.from_numpy(arrays[s]) for s in SPLITS), image_shape=shape)

    def state_dict(self) -> dict:
        """Lightning's datamodule state in every checkpoint, plus which bytes were trained on."""
        state = super().state_dict()
        if self.data_sha256 is not None:
            state["data_file"] = {"path": str(self.path), "sha256": self.data_sha256}
        return state


def _image_shape(value: Sequence[int] | None) -> tuple[int, int] | None:
    """``data.image_shape`` as ``(H, W)``, or a one-line refusal."""
    if value is None:
        return None
    shape = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(shape) != 2 or not all(type(n) is int and n > 0 for n in shape):
        raise UserError(
            f"data.image_shape must be [height, width], two positive integers; got {value}"
        )
    return shape[0], shape[1]


def data_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's image files (their relative paths and bytes)."""
    if path.is_file():
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    total = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        total.update(str(file.relative_to(path)).encode() + b"\0")
        total.update(bytes.fromhex(data_digest(file)))
    return total.hexdigest()


class NpzDataModule(UserDataModule):
    """``data.path``: an ``.npz`` with arrays ``train``, ``val``, ``test`` (each ``[N, H, W]`` or
    ``[N, D]``, uint8 0..255 or floats in [0, 1]), or a single array cut by ``data.split``."""

    name = "npz"

    def read(self) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
        return read_npz(self.path)


class FolderDataModule(UserDataModule):
    """``data.path``: a folder with subfolders ``train/``, ``val/``, ``test/`` of image files, or
    image files anywhere below it cut by ``data.split``. Images are read as 8-bit grey / 255."""

    name = "folder"

    def read(self) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
        if not self.path.is_dir():
            raise UserError(f"data.path {self.path} is not a folder of images")
        subdirs = [s for s in SPLITS if (self.path / s).is_dir()]
        if not subdirs:
            x, shape = read_image_folder(self.path)
            return {"all": x}, shape
        arrays, shapes = {}, {}
        for s in subdirs:
            arrays[s], shapes[s] = read_image_folder(self.path / s)
        if len(set(shapes.values())) != 1:
            raise UserError(
                f"{self.path}: the split folders hold images of different sizes {shapes}"
            )
        return arrays, shapes[subdirs[0]]
