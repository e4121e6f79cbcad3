"""End to end: ``python train.py`` writes what a researcher reads; bad input fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from iwae.run import train
from tests.conftest import ROOT, compose_config

TINY = [
    "logger=csv",
    "data.split=[200,50,50]",
    "schedule.epochs=2",
    "eval.k=50",
    "eval.val_k=5",
    "trainer.enable_progress_bar=false",
]
REQUIRED = {
    "test/nll",
    "eval/k",
    "test/active_units",
    "test/active_units_per_layer",
    "val/bound",
    "train/steps",
}


def run_train(args: list[str], tmp_path, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_train_py_end_to_end(tmp_path):
    proc = run_train(["objective=iwae", "k=3", "model=two_layer", *TINY], tmp_path)
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
    overrides = ["objective=vae", "k=2", *TINY, "logger=none"]
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
    proc = run_train([*args, *TINY], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-2000:]
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "checkpoints").exists()
