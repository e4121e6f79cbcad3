"""End to end: ``python train.py`` writes what a researcher reads; bad input fails cleanly."""

from __future__ import annotations

import json

import pytest
import torch

from iwae.launch.run import train
from tests.helpers import TINY, compose_config, no_wandb_env, run_train

RUN = [*TINY, "logger=csv", "schedule.epochs=2", "eval.k=50"]
REQUIRED = {
    "test/nll",
    "eval/k",
    "test/active_units",
    "test/active_units_per_layer",
    "val/bound",
    "train/steps",
}


def test_train_py_end_to_end(tmp_path):
    args = ["objective=iwae", "k=3", "model=two_layer", *RUN]
    proc = run_train(args, run_dir=tmp_path, timeout=240, env=no_wandb_env(), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED <= metrics.keys()
    assert metrics["eval/k"] == 50 and metrics["train/steps"] == 2 * 10  # 200 images / 20
    assert metrics["model"] == "two_layer" and metrics["objective"] == "iwae"
    assert len(metrics["test/active_units_per_layer"]) == 2
    assert metrics["test/active_units"] == sum(metrics["test/active_units_per_layer"])
    # a true bound: positive NLL, and the k=50 estimate is at least as tight as val's k=5 bound
    assert 0 < metrics["test/nll"] < 800 and metrics["val/bound"] < 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["train/steps"]  # last.ckpt holds the final weights
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt"]
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert "test/nll (k=50)" in proc.stdout


def test_in_process_run_is_reproducible(tmp_path):
    overrides = ["objective=vae", "k=2", *RUN, "logger=none"]
    first = train(compose_config(overrides, tmp_path / "a"), _mkdir(tmp_path / "a"))
    second = train(compose_config(overrides, tmp_path / "b"), _mkdir(tmp_path / "b"))
    assert first["test/nll"] == second["test/nll"] and first["val/bound"] == second["val/bound"]
    third = train(compose_config([*overrides, "seed=1"], tmp_path / "c"), _mkdir(tmp_path / "c"))
    assert third["test/nll"] != first["test/nll"]


def _mkdir(path):
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    "args,expected",
    [
        (["k=0"], "k must be an integer >= 1, got 0"),
        (["objective=iwea"], "unknown objective 'iwea'; choose one of:"),
        (["model=three_layer"], "unknown model 'three_layer'; choose one of:"),
        (["data=cifar"], "unknown data 'cifar'; choose one of:"),
        (["ckpt_path=/nonexistent/x.ckpt"], "checkpoint not found: /nonexistent/x.ckpt"),
    ],
)
def test_bad_input_fails_with_one_line(args, expected, tmp_path):
    proc = run_train([*args, *RUN], run_dir=tmp_path, timeout=240, env=no_wandb_env(), check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-2000:]
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "checkpoints").exists()
