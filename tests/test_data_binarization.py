"""Fixed and dynamic binarization, deterministic evaluation data, and bad input, through the
DataModules and the real Hydra configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import datamodules
from datamodules import FolderDataModule, MNISTDataModule, NpzDataModule
from iwae.errors import UserError
from tests.helpers import CONF_DIR, write_idx

N = 40  # images in the tiny pool


@pytest.fixture
def grey_npz(tmp_path) -> Path:
    """40 identical grey images (every pixel 0.5): any difference between two minibatches is
    the binarization, never the order they come in."""
    path = tmp_path / "grey.npz"
    np.savez(path, images=np.full((N, 6, 5), 0.5, dtype=np.float32))
    return path


def make(path: Path, **kw) -> NpzDataModule:
    kw = {"split": [20, 10, 10], "batch_size": 20, **kw}
    dm = NpzDataModule(path=str(path), **kw)
    dm.setup("fit")
    return dm


def epoch(dm) -> torch.Tensor:
    """One pass over the training data: ``[n_train, D]`` (one minibatch of 20 here)."""
    return torch.cat(list(dm.train_dataloader()))


def test_dynamic_resamples_every_epoch_reproducibly(grey_npz):
    a, b = make(grey_npz, seed=1), make(grey_npz, seed=1)
    a0, a1 = epoch(a), epoch(a)
    assert set(a0.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a0, a1)  # a fresh Bernoulli sample each epoch
    assert torch.equal(a0, epoch(b)) and torch.equal(a1, epoch(b))  # replayed from the seed
    assert not torch.equal(a0, epoch(make(grey_npz, seed=2)))


def test_fixed_reuses_one_sample_every_epoch(grey_npz):
    dm = make(grey_npz, binarization="fixed", seed=1)
    first, second = epoch(dm), epoch(dm)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    # Same images every epoch (the order is reshuffled): compare as sets of rows.
    assert torch.equal(first.unique(dim=0), second.unique(dim=0))
    assert torch.equal(first.sum(0), second.sum(0))
    other_seed = epoch(make(grey_npz, binarization="fixed", seed=2))
    assert not torch.equal(first.sum(0), other_seed.sum(0))


def batches(loader) -> torch.Tensor:
    return torch.cat(list(loader))


def test_val_and_test_are_the_same_for_every_training_seed(grey_npz):
    runs = [make(grey_npz, seed=s, binarization=b) for s, b in [(1, "dynamic"), (7, "fixed")]]
    for split in ("val_dataloader", "test_dataloader"):
        first, second = (batches(getattr(dm, split)()) for dm in runs)
        assert set(first.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(first, second)
        assert torch.equal(first, batches(getattr(runs[0], split)()))  # and every pass
    assert not torch.equal(batches(runs[0].val_dataloader()), batches(runs[0].test_dataloader()))


def test_resample_eval_draws_afresh_every_pass(grey_npz):
    dm = make(grey_npz, resample_eval=True)
    loader = dm.val_dataloader()
    assert not torch.equal(batches(loader), batches(loader))


# --- bad input ------------------------------------------------------------------------------
def test_split_larger_than_data(grey_npz):
    with pytest.raises(UserError, match=rf"npz: split sizes \[30, 10, 10\] need 50 .* has {N}"):
        make(grey_npz, split=[30, 10, 10])


def test_pool_without_split_sizes(grey_npz):
    with pytest.raises(UserError, match="grey.npz holds one pool of 40 images: set data.split"):
        make(grey_npz, split=None)


def test_empty_split(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, train=np.zeros((5, 4, 4)), val=np.zeros((0, 4, 4)), test=np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match="npz: the val split is empty"):
        make(path, split=None)


def test_splits_of_different_shapes(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, train=np.zeros((5, 4, 4)), val=np.zeros((2, 16)), test=np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match="mine.npz: the arrays hold images of different shapes"):
        make(path, split=None)


def test_values_outside_unit_interval(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, images=np.linspace(-1, 1, 40 * 4).reshape(40, 4))
    with pytest.raises(UserError, match=r"mine.npz\[all\]: values outside \[0, 1\]"):
        make(path)


def test_split_given_for_a_file_with_its_own_splits(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, train=np.zeros((5, 4)), val=np.zeros((2, 4)), test=np.zeros((2, 4)))
    with pytest.raises(UserError, match=r"has its own train/val/test splits; remove data.split"):
        make(path, split=[3, 1, 1])


def write_mnist(root: Path, n_train: int = 30, test_side: int = 28) -> MNISTDataModule:
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (8, test_side, test_side)))


def local_mnist(root: Path, **kw) -> MNISTDataModule:
    # Fixture files are not LeCun's: skip the checksum of local copies.
    return MNISTDataModule(root=str(root), download=False, verify_local=False, **kw)


def test_subset_keeps_the_first_images_and_checks_sizes(tmp_path):
    write_mnist(tmp_path)
    splits = local_mnist(tmp_path, n_validation=10, subset=[5, 2, 3]).prepare()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 2, 3)
    with pytest.raises(UserError, match="data.subset asks for 100 train images .* has 20"):
        local_mnist(tmp_path, n_validation=10, subset=[100, 2, 3]).prepare()
    with pytest.raises(UserError, match="data.subset must be three positive sizes"):
        local_mnist(tmp_path, subset=[5, 0, 3])


def test_validation_larger_than_the_training_file(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(UserError, match="data.n_validation=400 leaves no training images"):
        local_mnist(tmp_path).prepare()


def test_test_images_of_another_size(tmp_path):
    write_mnist(tmp_path, test_side=20)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz: images are \(20, 20\)"):
        local_mnist(tmp_path, n_validation=5).prepare()


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="data.path .*nothing.npz does not exist"):
        make(tmp_path / "nothing.npz")


def test_unknown_binarization(grey_npz):
    with pytest.raises(UserError, match="unknown data.binarization 'stochastic'"):
        make(grey_npz, binarization="stochastic")


def test_folder_with_split_subfolders(tmp_path):
    from PIL import Image

    for split, n in [("train", 3), ("val", 1), ("test", 2)]:
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.new("L", (7, 9), color=40 * i).save(tmp_path / split / f"{i}.png")
    dm = FolderDataModule(path=str(tmp_path), binarization="fixed")
    splits = dm.prepare()
    assert splits.image_shape == (9, 7) and dm.input_dim == 63
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)


# --- the real configs -----------------------------------------------------------------------
def compose_data(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("mnist", "MNISTDataModule"),
        ("fashion_mnist", "FashionMNISTDataModule"),
        ("binarized_mnist", "BinarizedMNISTDataModule"),
        ("omniglot", "OmniglotDataModule"),
        ("npz", "NpzDataModule"),
        ("folder", "FolderDataModule"),
    ],
)
def test_every_data_config_builds_its_datamodule(name, cls, tmp_path):
    overrides = [f"data={name}", "data.binarization=fixed"]
    if name in ("npz", "folder"):
        overrides.append(f"data.path={tmp_path}")
    dm = instantiate(compose_data(overrides).data)
    assert type(dm) is getattr(datamodules, cls)
    assert dm.binarization == "fixed" and dm.batch_size == 20


def test_npz_config_without_path_says_which_setting(tmp_path):
    from iwae.launch.assembly import (
        build,  # train.py's instantiate, which passes a UserError through
    )

    with pytest.raises(UserError, match=r"data=npz needs data.path=<your file or folder>"):
        build(compose_data(["data=npz"]).data)
