"""Results before media: flat ``[N, D]`` rows are drawn as images where their size allows
(a square D, or ``data.image_shape``), and a sample grid that cannot be drawn or written costs
one warning line, never ``metrics.json`` or a checkpoint."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from iwae.errors import UserError
from iwae.training import outputs
from tests.helpers import TINY, compose_config, small_model


def grid_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_flat_rows_of_a_square_length_are_drawn_as_square_images(tmp_path):
    """64 values a row: 8 x 8 images, 8 to a row of the grid (padding 2)."""
    path = tmp_path / "samples.png"
    assert outputs.save_sample_grid(small_model(input_dim=64).float(), (64,), path)
    assert grid_size(path) == (8 * (8 + 2) + 2,) * 2


def test_image_shape_draws_rows_of_any_length(tmp_path):
    path = tmp_path / "samples.png"
    assert outputs.save_sample_grid(small_model(input_dim=6).float(), (2, 3), path)
    assert grid_size(path) == (8 * (3 + 2) + 2, 8 * (2 + 2) + 2)


def test_rows_that_cannot_be_drawn_are_one_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "samples.png"
    assert not outputs.save_sample_grid(small_model(input_dim=6).float(), (6,), path)
    assert not path.exists()
    assert len(caplog.records) == 1 and "data.image_shape=[H,W]" in caplog.records[0].message


def test_a_failing_grid_is_one_warning(tmp_path, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("No space left on device\nsecond line")

    monkeypatch.setattr(outputs.torchvision.utils, "save_image", broken)
    caplog.set_level(logging.WARNING)
    assert not outputs.save_sample_grid(
        small_model(input_dim=64).float(), (8, 8), tmp_path / "s.png"
    )
    [record] = caplog.records
    assert record.getMessage().endswith("OSError: No space left on device")


def flat_npz(folder, d: int = 36):
    """300 random images as flat ``[N, d]`` rows, the way many users store them."""
    rng = np.random.default_rng(0)
    np.savez(folder / "flat.npz", all=rng.random((300, d), dtype=np.float32))
    return folder / "flat.npz"


def test_a_run_on_flat_rows_writes_its_result_first_then_draws_samples(tmp_path, monkeypatch):
    """Training, then ``mode=eval`` of its checkpoint: both write metrics.json and draw the
    flat 36-value rows as 6 x 6 images."""
    from iwae.launch import run
    from iwae.launch.eval_checkpoint import evaluate_checkpoint

    (tmp_path / "run").mkdir()
    data = flat_npz(tmp_path / "run")  # in the run's own directory: mode=eval may open it
    seen = []

    def grid_after_result(model, image_shape, path, *args, **kwargs):
        seen.append((path.parent / "metrics.json").is_file())
        return outputs.save_sample_grid(model, image_shape, path, *args, **kwargs)

    monkeypatch.setattr(run, "save_sample_grid", grid_after_result)
    overrides = [*TINY, "logger=none", "data=npz", f"data.path={data}", "eval.k=5"]
    run.train(compose_config(overrides, tmp_path / "run"), tmp_path / "run")
    assert seen == [True]  # metrics.json was on disk before the grid was drawn
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/nll"] > 0
    assert grid_size(tmp_path / "run" / "samples.png") == (8 * (6 + 2) + 2,) * 2
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    overrides = ["logger=none", "mode=eval", f"ckpt_path={ckpt}", "eval.k=5", "eval.val_k=2"]
    evaluate_checkpoint(compose_config(overrides, tmp_path / "eval"), tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/nll"] > 0
    assert grid_size(tmp_path / "eval" / "samples.png") == (8 * (6 + 2) + 2,) * 2


def test_image_shape_must_hold_the_rows_pixels(tmp_path):
    from datamodules.user_data import NpzDataModule

    data = flat_npz(tmp_path)
    module = NpzDataModule(path=str(data), split=[200, 50, 50], image_shape=[4, 9])
    assert module.image_shape == (4, 9) and module.input_dim == 36
    with pytest.raises(UserError, match=r"data.image_shape=\[5, 5\] holds 25 pixels.* H \* W = 36"):
        _ = NpzDataModule(path=str(data), split=[200, 50, 50], image_shape=[5, 5]).image_shape
    for bad in ([6], [6, 6, 1], "6x6", [6.0, 6], [0, 36]):
        with pytest.raises(UserError, match="data.image_shape must be"):
            NpzDataModule(path=str(data), split=[200, 50, 50], image_shape=bad)
