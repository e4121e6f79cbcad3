"""Sweeps on one machine: Hydra's basic launcher (runs one after another in one process) and the
joblib launcher (runs in parallel processes); W&B grouping of a sweep's runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import joblib
import pytest
from omegaconf import OmegaConf

from iwae.launch.device import set_torch_threads
from iwae.launch.resolvers import gpus_for, register_resolvers, run_id, sweep_name
from iwae.training.resume import resume_requested
from tests.helpers import (
    TINY,
    WANDB_GROUP,
    WANDB_TAG,
    check_report,
    run_dirs,
    run_train,
    wandb_run_files,
    wandb_string_field,
)


@pytest.mark.parametrize(
    ("sweep_dir", "name"),
    [
        ("multirun/2026-11-24/20-37-38", "2026-11-24/20-37-38"),
        ("/scratch/me/multirun/table1", "table1"),
        ("/scratch/me/sweeps/table1", "scratch/me/sweeps/table1"),
        ("table1", "table1"),
    ],
)
def test_sweep_name(sweep_dir: str, name: str) -> None:
    assert sweep_name(sweep_dir) == name


def test_resolvers_outside_a_run_give_no_group() -> None:
    """Configs composed without a Hydra run (tests, notebooks) still resolve: no group, no tags."""
    register_resolvers()
    cfg = OmegaConf.create({"g": "${iwae.sweep_group:}", "t": "${iwae.sweep_tags:}"})
    assert cfg.g is None and list(cfg.t) == []


def test_wandb_run_id_is_the_run_directorys() -> None:
    """Every start of one run directory (a requeued job) continues one W&B run."""
    assert run_id("multirun/x/0") == run_id("multirun/x/./0") != run_id("multirun/x/1")


def test_slurm_gpus_follow_the_trainer() -> None:
    assert gpus_for("gpu", 4) == 4
    assert gpus_for("cpu", 2) is None and gpus_for("auto", 1) is None


def test_threads_and_resume_from_the_slurm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    # set_torch_threads exports OMP_NUM_THREADS: monkeypatch puts the original back afterwards.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "0"))
    try:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert set_torch_threads(None) == 1
        assert set_torch_threads(2) == 2  # an explicit threads= wins
        assert os.environ["OMP_NUM_THREADS"] == "2"  # kept by Lightning's DDP, inherited by ranks
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job continues
    assert resume_requested(False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not resume_requested(False) and resume_requested(True)


def _check_runs(sweep: Path, objectives: list[str]) -> list[Path]:
    """One directory per run with its own metrics.json and checkpoint."""
    dirs = run_dirs(sweep)
    assert [d.name for d in dirs] == [str(i) for i in range(len(objectives))]
    for d, objective in zip(dirs, objectives):
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["objective"] == objective
        assert metrics["train/steps"] == 10
        assert (d / "checkpoints" / "last.ckpt").is_file()
    return dirs


def test_basic_sweep_one_wandb_run_per_job_grouped_by_sweep(tmp_path: Path) -> None:
    """The basic launcher runs all jobs in one process: each must still get its own W&B run,
    in the sweep's group, tagged with its overrides."""
    sweep = tmp_path / "multirun" / "grouped"
    run_train(["-m", "objective=vae,iwae", f"hydra.sweep.dir={sweep}", *TINY], tmp_path, 300)
    dirs = _check_runs(sweep, ["vae", "iwae"])
    tags = ["objective=vae", "objective=iwae"]
    for d, tag, other in zip(dirs, tags, reversed(tags)):
        (run_file,) = wandb_run_files(d)  # exactly one: the next job did not reuse it
        data = run_file.read_bytes()
        assert wandb_string_field("grouped", WANDB_GROUP) in data
        assert wandb_string_field(tag, WANDB_TAG) in data
        assert wandb_string_field(other, WANDB_TAG) not in data


def _joblib_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "objective=vae,iwae"]
    tiny = [a for a in TINY if "progress_bar" not in a]  # the default: off in joblib's jobs
    proc = run_train([*args, f"hydra.sweep.dir={sweep}", "logger=none", *tiny], tmp_path, 300)
    dirs = _check_runs(sweep, ["vae", "iwae"])
    # The workers are as quiet as the parent, one closing table per run.
    output = proc.stdout + proc.stderr
    for noise in ("litlogger", "LeafSpec", "validated against ConfigStore", "\r", "it/s]"):
        assert noise not in output, f"{noise!r} in a joblib sweep's output"
    for d in dirs:
        assert re.search(rf"^run dir +{re.escape(str(d))}$", proc.stdout, re.MULTILINE)
    assert proc.stdout.count("wall time") == 2
    # joblib gives each of its n_jobs workers its share of the cores, and torch keeps to it.
    share = max(1, joblib.cpu_count() // 2)
    for d in dirs:
        assert f"torch threads: {share}" in (d / "train.log").read_text()
    return sweep


def test_joblib_sweep_runs_in_parallel_processes(tmp_path: Path) -> None:
    _joblib_sweep(tmp_path)


@pytest.mark.slow
def test_report_on_a_joblib_sweep(tmp_path: Path) -> None:
    """The sweep report, checkpoint figures included, reads what the joblib launcher wrote
    (slow: the report costs as much as the sweep)."""
    check_report(_joblib_sweep(tmp_path), 2)
