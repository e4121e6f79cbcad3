"""A single run refuses, before it trains, a resume on other data bytes (``data=npz``,
``data=folder``) and a resume that changes the run before the model and Lightning are built;
and a batch limit that ``steps_per_batch`` would multiply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import iwae.launch.run as run
from datamodules.user_data import data_digest
from iwae.errors import UserError
from iwae.launch.run import train
from tests.helpers import FAST, TINY, compose_config, file_digest, save_untrained_checkpoint

# 40 training images (2 steps an epoch) in the data's own file, a tiny evaluation
SMALL = [*TINY, "logger=none", "eval.k=5", "eval.val_k=2", "data.split=null"]


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


def _write_npz(path: Path, seed: int) -> list[str]:
    np.savez(path, train=_images(40, seed), val=_images(10, seed + 1), test=_images(10, seed + 2))
    return ["data=npz", f"data.path={path}"]


def _write_folder(path: Path, seed: int) -> list[str]:
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        (path / split).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(_images(n, seed)):
            Image.fromarray((image * 255).astype(np.uint8)).save(path / split / f"{i}.png")
    return ["data=folder", f"data.path={path}"]


def _replace_data(kind: str, path: Path) -> None:
    """The same shape, other bytes: the whole .npz, or two images of the folder."""
    if kind == "npz":
        _write_npz(path, seed=100)
        return
    for name in ("3.png", "17.png"):
        image = _images(1, seed=int(name.split(".")[0]) + 50)[0]
        Image.fromarray((image * 255).astype(np.uint8)).save(path / "train" / name)


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_a_resume_on_changed_data_is_refused(kind: str, tmp_path: Path) -> None:
    data = tmp_path / ("data.npz" if kind == "npz" else "images")
    overrides = [*SMALL, *(_write_npz if kind == "npz" else _write_folder)(data, seed=0)]
    run_dir = tmp_path / "run"
    train(compose_config(overrides, run_dir), run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    before, old_sha = file_digest(last), data_digest(data)
    _replace_data(kind, data)
    new_sha = data_digest(data)
    assert new_sha != old_sha
    # a longer schedule may be resumed: only the data makes this resume another run
    resumed = compose_config([*overrides, "schedule.epochs=2", "resume=true"], run_dir)
    with pytest.raises(UserError) as err:
        train(resumed, run_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data file {data} changed since {last}")
    assert f"SHA-256 {new_sha}, was {old_sha}" in message
    assert file_digest(last) == before  # nothing trained on the new data


def test_a_changed_resume_is_refused_before_the_model_and_lightning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    save_untrained_checkpoint(last, ["k=5", "data.split=[200,50,50]"])

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("built before the resume was checked")

    for name in ("check_run_values", "build_module", "build_trainer"):
        monkeypatch.setattr(run, name, must_not_run)
    cfg = compose_config([*FAST, "data.split=[200,50,50]", "k=50", "resume=true"], tmp_path)
    with pytest.raises(UserError, match=f"resuming {last} would change the run: k: 5 there, 50"):
        train(cfg, tmp_path)


def test_a_batch_limit_counted_in_groups_of_steps_is_refused(tmp_path: Path) -> None:
    """``debug=default`` limits training to 5 batches: with steps_per_batch=4, 20 steps."""
    cfg = compose_config([*TINY, "debug=default", "steps_per_batch=4"], tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "trainer.limit_train_batches=5 counts Lightning" in message
    assert "steps_per_batch=4 (20 steps)" in message
    assert not (tmp_path / "metrics.json").exists()
    # a fraction is the same share of steps as of batches; one step per batch counts steps
    run.check_batch_limit(
        compose_config([*TINY, "steps_per_batch=4", "+trainer.limit_train_batches=0.5"], tmp_path)
    )
    run.check_batch_limit(compose_config([*TINY, "debug=default"], tmp_path))
