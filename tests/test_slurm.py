"""Sweeps through ``hydra/launcher=slurm`` (submitit) on a real one-node SLURM cluster started
on this machine (tests/slurm_cluster.py), and a preempted job that requeues and resumes.

Slow (a minute or more each); ``.ci/run`` runs them with IWAE_REQUIRE_SLURM=1, which turns a
missing SLURM installation from a skip into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iwae.training.checkpointing import load_checkpoint
from tests.helpers import (
    ROOT,
    TINY,
    TRAIN,
    WANDB_GROUP,
    WANDB_TAG,
    check_report,
    run_dirs,
    run_train,
    train_env,
    wait_for,
    wandb_run_files,
    wandb_string_field,
)
from tests.slurm_cluster import LocalSlurmCluster, missing_binaries

pytestmark = pytest.mark.slow

# One CPU per job so both runs of a sweep fit on a 2-core node at once; no memory request (the
# node's RealMemory is what the machine has); a time limit far from the test's length, so
# submitit reads a signal as preemption, not as a timeout.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=60",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    problem = None
    if missing_binaries():
        problem = "SLURM is not installed: " + ", ".join(missing_binaries())
    elif os.geteuid() != 0:
        problem = "a local SLURM cluster needs root (slurmd starts jobs as their user)"
    if problem:
        if os.environ.get("IWAE_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    slurm = LocalSlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield slurm
    finally:
        slurm.stop()


def _env(cluster: LocalSlurmCluster, tmp: Path) -> dict[str, str]:
    """A run's environment plus the cluster's: submitit calls sbatch/sacct, jobs call srun."""
    return train_env(tmp, SLURM_CONF=cluster.env["SLURM_CONF"], PATH=cluster.env["PATH"])


def _slurm(cluster: LocalSlurmCluster, *args: str) -> str:
    out = subprocess.run(
        list(args), env=cluster.env, capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout


def _requeued(cluster: LocalSlurmCluster, job: str) -> bool:
    """Back in the queue after its first run (before that, SLURM would undo a StartTime)."""
    info = _slurm(cluster, "scontrol", "show", "job", "-o", job)
    return "Restarts=1" in info and "JobState=PENDING" in info


def test_two_run_sweep_through_submitit(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "on_slurm"
    args = ["-m", *SLURM, "objective=vae,iwae", f"hydra.sweep.dir={sweep}", *TINY]
    run_train(args, tmp_path, timeout=900, env=_env(cluster, tmp_path))

    dirs = run_dirs(sweep)
    assert [d.name for d in dirs] == ["0", "1"]
    for d, objective in zip(dirs, ["vae", "iwae"]):
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["objective"] == objective and metrics["train/steps"] == 10
        assert (d / "checkpoints" / "last.ckpt").is_file()
        (run_file,) = wandb_run_files(d)
        data = run_file.read_bytes()  # the sweep's W&B group, the run's overrides as tags
        assert wandb_string_field("on_slurm", WANDB_GROUP) in data
        assert wandb_string_field(f"objective={objective}", WANDB_TAG) in data
        # The job's torch threads follow its --cpus-per-task, not the node's cores.
        assert "torch threads: 1" in (d / "train.log").read_text()
    assert list(sweep.glob(".submitit/*/*_submission.sh")) or list(sweep.glob(".submitit/*.sh"))
    check_report(sweep, 2)  # the full report, checkpoint figures included


def test_a_plugin_bound_trains_in_a_slurm_job(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """The trust of ``plugins=`` travels to the job (in its config), the module's folder in
    the environment: the researcher's bound trains on the cluster as on the laptop."""
    example = ROOT / "examples" / "tempered_bound"
    sweep = tmp_path / "multirun" / "plugin"
    args = ["-m", *SLURM, "objective=tempered", "objective.temperature=0.25", "plugins=[mybound]"]
    args += [f"hydra.searchpath=[file://{example / 'conf'}]", f"hydra.sweep.dir={sweep}", *TINY]
    env = _env(cluster, tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(example), env.get("PYTHONPATH")) if p)
    run_train(args, tmp_path, timeout=900, env=env)
    (run,) = run_dirs(sweep)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["objective"] == "tempered" and metrics["train/steps"] == 10
    assert "torch threads: 1" in (run / "train.log").read_text()  # it ran as a SLURM task


def test_ddp_run_as_a_two_task_job(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """trainer=ddp_cpu through the launcher: one job, srun starts one task per process (no
    re-run of the command line), and rank 0 alone writes the run's outputs."""
    sweep = tmp_path / "ddp"
    ddp = ["trainer=ddp_cpu", "data.batch_size=10", "schedule.epochs=2"]
    args = ["-m", *SLURM, f"hydra.sweep.dir={sweep}", *TINY, *ddp]
    run_train(args, tmp_path, timeout=900, env=_env(cluster, tmp_path))

    assert "--ntasks-per-node=2" in "".join(p.read_text() for p in sweep.glob(".submitit/*/*.sh"))
    (run,) = run_dirs(sweep)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/steps"] == 20  # 2 x 10 images a step: the single process's 20
    assert len(wandb_run_files(run)) == 1
    # Lightning logs through Hydra's handlers (stdout and train.log), not a stderr of its own
    rank1_log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_1_log.*"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1_log


def test_preempted_job_requeues_and_resumes(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """SIGUSR1 (SLURM's signal before a time limit or preemption): the run saves last.ckpt,
    submitit requeues the job, and the job's second start continues from that checkpoint."""
    sweep = tmp_path / "requeue"
    epochs, steps_per_epoch = 60, 10
    args = [
        "-m",
        *SLURM,
        f"hydra.sweep.dir={sweep}",
        *TINY,
        f"schedule.epochs={epochs}",
    ]
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(TRAIN), *args],
            cwd=tmp_path,
            env=_env(cluster, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    job = ""
    try:
        wait_for(last.is_file, 300, "the job's first checkpoint")
        job = _slurm(cluster, "squeue", "-h", "-o", "%i").split()[0]
        _slurm(cluster, "scancel", "--signal=USR1", job)
        wait_for(lambda: _requeued(cluster, job), 120, "SLURM to requeue the job")
        step_at_preemption = load_checkpoint(last)["global_step"]
        # SLURM holds a requeued job for two minutes before it may start again: skip the wait.
        _slurm(cluster, "scontrol", "update", f"JobId={job}", "StartTime=now")
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)
    launcher_log = (tmp_path / "launcher.log").read_text()
    assert launcher.returncode == 0, launcher_log[-4000:]

    # submitit's messages go to the run's train.log, Lightning's to the job's output too.
    run_log = (sweep / "0" / "train.log").read_text()
    assert "this job is preempted" in run_log and "Requeued job" in run_log
    job_log = "".join(p.read_text() for p in sweep.glob(f".submitit/{job}*/*_log.*"))
    assert f"Restoring states from the checkpoint path at {last}" in job_log
    assert 0 < step_at_preemption < epochs * steps_per_epoch
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["train/steps"] == epochs * steps_per_epoch
    # Both starts logged to one W&B run: two offline records of the same run id.
    starts = wandb_run_files(sweep / "0")
    assert len(starts) == 2 and len({p.name for p in starts}) == 1, starts
    assert metrics["train/epochs"] == epochs
