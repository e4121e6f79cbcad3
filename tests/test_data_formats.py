"""Parsers of the real file formats, on small files generated here in those formats.

The writers below (``write_idx``, ``write_amat``, ``write_chardata``) are imported by the other
``test_data_*`` modules.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from datamodules.formats import (
    read_amat,
    read_idx,
    read_idx_images,
    read_image_folder,
    read_npz,
    read_omniglot_mat,
)
from iwae.errors import UserError
from tests.helpers import (
    TINY,
    asymmetric_digit,
    compose_config,
    write_amat,
    write_chardata,
    write_idx,
)


# --- IDX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_images_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x, shape = read_idx_images(write_idx(tmp_path / name, images))
    assert shape == (28, 28)
    assert x.shape == (5, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(5, 784) / 255.0, rtol=1e-6)


def test_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match="bad-idx3-ubyte.*not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated_file_names_the_file(tmp_path, compress):
    images = np.ones((4, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, compress=False)
    data = path.read_bytes()[:-100]  # a download cut short
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(UserError, match="train-images-idx3-ubyte: IDX file truncated"):
        read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.ones((50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_idx_labels_file_is_not_images(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    assert read_idx(path).tolist() == list(range(10))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte: expected uint8 images"):
        read_idx_images(path)


# --- .amat ----------------------------------------------------------------------------------
def test_amat_round_trip(tmp_path):
    binary = np.random.default_rng(1).integers(0, 2, (7, 784))
    x = read_amat(write_amat(tmp_path / "binarized_mnist_valid.amat", binary))
    assert x.shape == (7, 784) and x.dtype == np.float32
    np.testing.assert_array_equal(x, binary)


def test_amat_irregular_spacing_takes_the_slow_path(tmp_path):
    binary = np.random.default_rng(2).integers(0, 2, (3, 784))
    path = tmp_path / "crlf.amat"
    path.write_text("".join("  ".join(f"{v}.0" for v in row) + "\r\n" for row in binary))
    np.testing.assert_array_equal(read_amat(path), binary)


def test_amat_truncated_line_names_file_and_line(tmp_path):
    binary = np.zeros((3, 784), dtype=int)
    path = write_amat(tmp_path / "binarized_mnist_test.amat", binary)
    path.write_text(path.read_text()[:-700])  # the last line is cut short
    with pytest.raises(UserError, match=r"binarized_mnist_test.amat: line 3 has \d+ values"):
        read_amat(path)


def test_amat_wrong_width(tmp_path):
    path = write_amat(tmp_path / "narrow.amat", np.zeros((2, 100), dtype=int))
    with pytest.raises(UserError, match="narrow.amat: line 1 has 100 values, expected 784"):
        read_amat(path)


# --- Omniglot chardata.mat ------------------------------------------------------------------
def test_chardata_column_major_images_come_out_upright(tmp_path):
    digit = asymmetric_digit()
    train = np.stack([digit, np.fliplr(digit), np.zeros((28, 28), np.float32)])
    test = np.stack([digit.T])
    train_x, test_x = read_omniglot_mat(write_chardata(tmp_path / "chardata.mat", train, test))
    assert train_x.shape == (3, 784) and test_x.shape == (1, 784)
    np.testing.assert_array_equal(train_x[0].reshape(28, 28), digit)
    np.testing.assert_array_equal(train_x[1].reshape(28, 28), np.fliplr(digit))
    np.testing.assert_array_equal(test_x[0].reshape(28, 28), digit.T)
    # The vertical bar is column 3, the grey pixel top-right: not transposed, not flipped.
    assert train_x[0].reshape(28, 28)[10, 3] == 1 and train_x[0].reshape(28, 28)[3, 10] == 0
    assert train_x[0].reshape(28, 28)[0, 27] == 0.5


def test_chardata_missing_variable(tmp_path):
    path = tmp_path / "chardata.mat"
    savemat(path, {"data": np.zeros((784, 2))})
    with pytest.raises(UserError, match="chardata.mat: no variable 'testdata'"):
        read_omniglot_mat(path)


def test_chardata_wrong_shape(tmp_path):
    path = tmp_path / "chardata.mat"
    savemat(path, {"data": np.zeros((2, 784)), "testdata": np.zeros((784, 2))})
    with pytest.raises(UserError, match=r"chardata.mat: 'data' has shape \[2, 784\]"):
        read_omniglot_mat(path)


def test_chardata_truncated(tmp_path):
    path = write_chardata(tmp_path / "chardata.mat", np.zeros((40, 28, 28)), np.zeros((5, 28, 28)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match="chardata.mat: cannot read the MATLAB file"):
        read_omniglot_mat(path)


# --- user data ------------------------------------------------------------------------------
def test_npz_uint8_is_scaled_and_splits_kept(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        s: rng.integers(0, 256, (n, 8, 6), dtype=np.uint8)
        for s, n in [("train", 5), ("val", 2), ("test", 3)]
    }
    np.savez(tmp_path / "mine.npz", **arrays)
    out, shape = read_npz(tmp_path / "mine.npz")
    assert shape == (8, 6) and sorted(out) == ["test", "train", "val"]
    np.testing.assert_allclose(out["train"], arrays["train"].reshape(5, 48) / 255.0, rtol=1e-6)


def test_npz_float_outside_unit_interval(tmp_path):
    np.savez(tmp_path / "mine.npz", images=np.full((4, 10), 255.0))
    with pytest.raises(UserError, match=r"mine.npz\[all\]: values outside \[0, 1\]"):
        read_npz(tmp_path / "mine.npz")


def test_npz_wrong_shape(tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros(10))
    with pytest.raises(UserError, match=r"flat.npz\[all\]: array of shape \[10\]"):
        read_npz(tmp_path / "flat.npz")


def test_image_folder_reads_grey_images(tmp_path):
    from PIL import Image

    digit = (asymmetric_digit() * 255).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "a.png")
    Image.fromarray(255 - digit).convert("RGB").save(tmp_path / "b.png")
    x, shape = read_image_folder(tmp_path)
    assert shape == (28, 28) and x.shape == (2, 784)
    np.testing.assert_allclose(x[0].reshape(28, 28), digit / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[1].reshape(28, 28), (255 - digit) / 255.0, rtol=1e-6)


def test_image_folder_mixed_sizes(tmp_path):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    Image.new("L", (20, 28)).save(tmp_path / "b.png")
    with pytest.raises(UserError, match="b.png: image size"):
        read_image_folder(tmp_path)


@pytest.mark.parametrize("layout", [(3, 1, 8, 6), (3, 8, 6, 1)])
def test_npz_channel_axis_is_dropped(tmp_path, layout):
    images = np.random.default_rng(4).random(layout).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=images)
    out, shape = read_npz(tmp_path / "mine.npz")
    assert shape == (8, 6)
    np.testing.assert_array_equal(out["all"], images.reshape(3, 48))


@pytest.mark.parametrize("kind", ["text", "object arrays"])
def test_npz_that_is_text_or_holds_objects_never_suggests_unsafe_loading(tmp_path, kind):
    path = tmp_path / "images.npz"
    if kind == "text":
        path.write_text("0 1 0 1\n1 0 1 0\n")
        expected = "it is not an .npz archive"
    else:
        np.savez(path, train=np.array([{"a": 1}], dtype=object))
        expected = "holds object arrays, which are never unpickled"
    with pytest.raises(UserError, match="cannot read the .npz file") as err:
        read_npz(path)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "allow_pickle" not in message and "unsafe" not in message


# --- mode=eval scores the bytes a run was trained on ------------------------------------------
@pytest.fixture
def npz_run(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A one-epoch run on ``images.npz`` given by a relative path; (checkpoint, data file).
    The file lies in the run's own directory: a rebuild opens a stored path only there or in
    the machine's data directory."""
    from iwae.launch.run import train

    rng = np.random.default_rng(0)
    data = tmp_path / "run" / "trained_here"
    data.mkdir(parents=True)
    np.savez(data / "images.npz", all=rng.random((300, 6, 6), dtype=np.float32))
    monkeypatch.chdir(data)
    overrides = [*TINY, "logger=none", "data=npz", "data.path=images.npz", "eval.enabled=false"]
    train(compose_config(overrides, tmp_path / "run"), tmp_path / "run")
    return tmp_path / "run" / "checkpoints" / "last.ckpt", data / "images.npz"


def test_eval_reads_the_stored_absolute_path_and_refuses_a_changed_file(
    npz_run, tmp_path, monkeypatch
):
    from iwae.launch.assembly import load_run

    ckpt, data = npz_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.savez(elsewhere / "images.npz", all=np.zeros((300, 6, 6), dtype=np.float32))
    monkeypatch.chdir(elsewhere)  # the stored relative path would now name this file
    assert load_run(ckpt).datamodule.path == data
    np.savez(data, all=np.ones((300, 6, 6), dtype=np.float32))  # same shape, other bytes
    with pytest.raises(UserError, match=r"changed since .* pass eval.data_path=") as err:
        load_run(ckpt)
    assert "\n" not in str(err.value)
    assert load_run(ckpt, data_path=str(data)).datamodule.path == data  # on purpose
    old = torch.load(ckpt, weights_only=True)
    del old["NpzDataModule"]  # as written before checksums: only the relative path
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match="stores the relative data.path 'images.npz' and no"):
        load_run(tmp_path / "old.ckpt")


def test_eval_with_another_data_file_records_it_in_metrics(npz_run, tmp_path):
    import json

    from iwae.launch.eval_checkpoint import evaluate_checkpoint

    ckpt, data = npz_run
    other = tmp_path / "other.npz"
    np.savez(other, all=np.zeros((300, 6, 6), dtype=np.float32))
    overrides = ["logger=none", "mode=eval", f"ckpt_path={ckpt}", "eval.k=5", "eval.val_k=2"]
    cfg = compose_config([*overrides, f"eval.data_path={other}"], tmp_path / "eval")
    evaluate_checkpoint(cfg, tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["eval/data_path"] == str(other)
    assert metrics["eval/data_sha256"] != stored_sha256(ckpt)


def stored_sha256(ckpt: Path) -> str:
    """The SHA-256 Lightning stored with the datamodule's state in ``ckpt``."""
    return torch.load(ckpt, weights_only=True)["NpzDataModule"]["data_file"]["sha256"]
