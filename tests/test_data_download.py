"""Finding and downloading dataset files, against an HTTP server on 127.0.0.1 in this process."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules import (
    BinarizedMNISTDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    OmniglotDataModule,
)
from datamodules.download import RemoteFile, fetch
from datamodules.formats import read_idx_images
from iwae.errors import UserError
from tests.helpers import asymmetric_digit, write_amat, write_chardata, write_idx

MNIST_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path/served`` over HTTP; ``requests`` lists the paths asked for."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(
        dir=served, url=f"http://127.0.0.1:{httpd.server_port}/", requests=requests
    )
    httpd.shutdown()
    httpd.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    """A URL nobody listens on: the stand-in for a machine without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve_mnist(directory: Path, n_train: int = 30, n_test: int = 8) -> dict[str, str]:
    """Small MNIST-format files in ``directory``; returns their SHA-256 by file name."""
    rng = np.random.default_rng(0)
    for name, n in zip(MNIST_FILES, (n_train, n_test), strict=True):
        write_idx(directory / name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    return {name: sha256(directory / name) for name in MNIST_FILES}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- fetch ----------------------------------------------------------------------------------
def test_good_download_is_verified_and_kept(server, tmp_path):
    (server.dir / "f.bin").write_bytes(b"hello")
    spec = RemoteFile("f.bin", sha256=hashlib.sha256(b"hello").hexdigest())
    paths = fetch([spec], [tmp_path / "root"], server.url, "toy")
    assert paths["f.bin"].read_bytes() == b"hello"
    assert leftovers(tmp_path / "root") == ["f.bin"]  # no temporary file left beside it
    fetch([spec], [tmp_path / "root"], server.url, "toy")
    assert server.requests == ["/f.bin"]  # the second call found it locally


def test_checksum_mismatch_is_neither_used_nor_kept(server, tmp_path):
    (server.dir / "f.bin").write_bytes(b"tampered")
    spec = RemoteFile("f.bin", sha256=hashlib.sha256(b"original").hexdigest())
    with pytest.raises(UserError, match=r"downloaded http://127.0.0.1:\d+/f.bin but it has SHA"):
        fetch([spec], [tmp_path / "root"], server.url, "toy")
    assert leftovers(tmp_path / "root") == []


def test_md5_only_sources_are_checked(server, tmp_path):
    (server.dir / "f.bin").write_bytes(b"hello")
    good = RemoteFile("f.bin", md5=hashlib.md5(b"hello").hexdigest())
    bad = RemoteFile("f.bin", md5=hashlib.md5(b"other").hexdigest())
    with pytest.raises(UserError, match="has MD5"):
        fetch([bad], [tmp_path / "a"], server.url, "toy")
    assert fetch([good], [tmp_path / "b"], server.url, "toy")["f.bin"].is_file()


def test_no_checksum_warns_with_the_sha256_to_pin(server, tmp_path, caplog):
    (server.dir / "f.bin").write_bytes(b"hello")
    with caplog.at_level(logging.WARNING, logger="datamodules.download"):
        fetch([RemoteFile("f.bin")], [tmp_path / "root"], server.url, "toy")
    assert hashlib.sha256(b"hello").hexdigest() in caplog.text
    assert "no published checksum" in caplog.text


def test_http_404_reports_the_missing_file(server, tmp_path):
    with pytest.raises(UserError, match=r"data=toy: missing absent.bin \(download from"):
        fetch([RemoteFile("absent.bin")], [tmp_path / "root"], server.url, "toy")
    assert leftovers(tmp_path / "root") == []


def test_local_file_failing_its_checksum_stops_unless_told(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"local edit")
    spec = RemoteFile("f.bin", sha256=hashlib.sha256(b"original").hexdigest())
    with pytest.raises(UserError, match="f.bin has SHA-256 .*data.verify_local=false"):
        fetch([spec], [tmp_path], None, "toy")
    assert fetch([spec], [tmp_path], None, "toy", verify_local=False)["f.bin"].is_file()


# --- DataModules over the server ------------------------------------------------------------
def test_mnist_downloads_and_splits_like_the_paper(server, tmp_path):
    checksums = serve_mnist(server.dir, n_train=30, n_test=8)
    dm = MNISTDataModule(
        root=str(tmp_path / "data"), base_url=server.url, checksums=checksums, n_validation=4
    )
    splits = dm.prepare()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (26, 4, 8)
    assert sorted(server.requests) == sorted(f"/{n}" for n in MNIST_FILES)
    assert leftovers(tmp_path / "data" / "mnist") == sorted(MNIST_FILES)
    # The paper's code validates on the last images of the training file, unshuffled.
    probs = MNISTDataModule(
        root=str(tmp_path / "data"),
        download=False,
        checksums=checksums,
        n_validation=4,
        resample_eval=True,  # val/test stay probabilities, comparable with the file
    ).prepare()
    pixels = torch.from_numpy(read_train_images(server.dir))
    assert torch.equal(probs.val, pixels[-4:]) and torch.equal(probs.train, pixels[:-4])


def read_train_images(directory: Path) -> np.ndarray:
    return read_idx_images(directory / MNIST_FILES[0])[0]


def test_mnist_corrupt_download_with_the_real_checksum(server, tmp_path):
    serve_mnist(server.dir)  # not LeCun's bytes: the built-in SHA-256 must reject them
    dm = MNISTDataModule(root=str(tmp_path / "data"), base_url=server.url)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz but it has SHA-256"):
        dm.prepare()
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_offline_message_names_files_place_and_alternatives(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "data"), base_url=closed_port_url())
    with pytest.raises(UserError) as info:
        dm.prepare()
    message = str(info.value)
    assert "\n" not in message
    for part in (*MNIST_FILES, str(tmp_path / "data" / "mnist"), "data=mnist_subset"):
        assert part in message
    assert "dataset-fashion-mnist" in message


def test_download_false_never_touches_the_network(server, tmp_path):
    serve_mnist(server.dir)
    dm = MNISTDataModule(root=str(tmp_path), base_url=server.url, download=False)
    with pytest.raises(UserError, match="downloads are off"):
        dm.prepare()
    assert server.requests == []


def test_torchvision_layout_is_reused(server, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    checksums = serve_mnist(raw)
    dm = MNISTDataModule(
        root=str(tmp_path / "data"), base_url=server.url, checksums=checksums, n_validation=5
    )
    assert len(dm.prepare().train) == 25
    assert server.requests == []


def test_fashion_mnist_uses_the_debian_files_unverified(tmp_path, monkeypatch, server):
    debian = tmp_path / "usr-share"
    debian.mkdir()
    serve_mnist(debian, n_train=12, n_test=6)  # recompressed bytes, not upstream's checksum
    monkeypatch.setattr(FashionMNISTDataModule, "trusted_dirs", (str(debian),))
    dm = FashionMNISTDataModule(root=str(tmp_path / "data"), base_url=server.url, n_validation=2)
    splits = dm.prepare()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 6)
    assert server.requests == []


def test_binarized_mnist_keeps_the_files_binarization(server, tmp_path, caplog):
    rng = np.random.default_rng(4)
    files = {}
    for name, n in [("train", 12), ("valid", 5), ("test", 6)]:
        files[f"binarized_mnist_{name}.amat"] = rng.integers(0, 2, (n, 784))
        write_amat(
            server.dir / f"binarized_mnist_{name}.amat", files[f"binarized_mnist_{name}.amat"]
        )
    checksums = {name: sha256(server.dir / name) for name in files}
    dm = BinarizedMNISTDataModule(
        root=str(tmp_path), base_url=server.url, checksums=checksums, binarization="dynamic"
    )
    with caplog.at_level(logging.WARNING):
        splits = dm.prepare()
    assert "changes nothing" in caplog.text
    assert splits.prebinarized and not dm.dynamic
    np.testing.assert_array_equal(splits.train.numpy(), files["binarized_mnist_train.amat"])
    np.testing.assert_array_equal(splits.test.numpy(), files["binarized_mnist_test.amat"])


def test_omniglot_paper_split_and_orientation(server, tmp_path):
    rng = np.random.default_rng(5)
    train = rng.random((30, 28, 28)).astype(np.float32)
    train[7] = asymmetric_digit()
    write_chardata(server.dir / "chardata.mat", train, rng.random((4, 28, 28)))
    dm = OmniglotDataModule(
        root=str(tmp_path), base_url=server.url, n_validation=5, resample_eval=True
    )
    splits = dm.prepare()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 4)
    order = np.random.RandomState(123).permutation(30)  # yburda/iwae's shuffle
    expected_val = train[order[-5:]].reshape(5, 784)
    np.testing.assert_allclose(splits.val.numpy(), expected_val, rtol=1e-6)
    row = int(np.where(order == 7)[0][0])
    image = torch.cat([splits.train, splits.val])[row].reshape(28, 28).numpy()
    np.testing.assert_array_equal(image, asymmetric_digit())
