"""A fused sweep held to a single run's rules: a resume that changes a member is refused, every
member is checked before the first group trains, one process per sweep directory, and the
launcher's options are refused in one line. Also: a run's lock file that is a symbolic link."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from datamodules.user_data import data_digest
from iwae.errors import UserError
from iwae.fused.members import Member
from iwae.launch.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock
from tests.helpers import TINY, TRAIN, compose_config, file_digest, no_wandb_env, wait_for_file

FUSED = ["-m", "hydra/launcher=fused", *TINY, "logger=none"]


def _sweep(args: list[str], sweep: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python train.py -m hydra/launcher=fused <TINY> <args> hydra.sweep.dir=<sweep>``."""
    proc = subprocess.run(
        [sys.executable, str(TRAIN), *FUSED, *args, f"hydra.sweep.dir={sweep}"],
        cwd=sweep.parent, env=no_wandb_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit status 2 and a single ``error:`` line, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def _digests(sweep: Path) -> dict[str, str]:
    return {str(p.relative_to(sweep)): file_digest(p) for p in sorted(sweep.rglob("*.ckpt"))}


# --- a resume that changes a member ----------------------------------------------------------
@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``k=1,5`` fused (two groups on the CPU), finished."""
    sweep = tmp_path_factory.mktemp("fused") / "sweep"
    _sweep(["k=1,5"], sweep)
    return sweep


def test_a_resume_with_another_k_is_refused_before_training(trained_sweep: Path) -> None:
    before = _digests(trained_sweep)
    line = _one_line(_sweep(["k=1,50", "resume=true"], trained_sweep, check=False))
    assert f"resuming {trained_sweep / 'fused' / 'group-1.ckpt'} would change job 1 (" in line
    assert "k: 5 there, 50 here" in line and "hydra.sweep.dir" in line
    assert _digests(trained_sweep) == before  # neither group trained on
    assert json.loads((trained_sweep / "1" / "metrics.json").read_text())["k"] == 5


def _member(sweep: Path, job: int, overrides: list[str]) -> Member:
    """Job ``job`` of the sweep as the launcher builds it, with ``overrides`` on top."""
    out = sweep / str(job)
    cfg = compose_config([*TINY, "logger=none", *overrides, "resume=true"], out)
    return Member(job, OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), out)


@pytest.mark.parametrize("change", ["optimizer.lr=0.01", "seed=7", "objective=vae"])
def test_every_change_a_single_run_refuses_is_refused(trained_sweep: Path, change: str) -> None:
    from iwae.fused.preflight import check_resume

    checkpoint = trained_sweep / "fused" / "group-0.ckpt"
    check_resume([_member(trained_sweep, 0, ["k=1"])], checkpoint, {0: None})  # as trained
    with pytest.raises(UserError) as err:
        check_resume([_member(trained_sweep, 0, ["k=1", change])], checkpoint, {0: None})
    message = str(err.value)
    assert "\n" not in message and f"{checkpoint} would change job 0 (" in message
    assert change.split("=")[0] in message.split("(no overrides): ")[1]  # the changed key


def test_a_resume_on_a_rewritten_data_file_is_refused(tmp_path: Path) -> None:
    def write(seed: int) -> None:
        rng = np.random.default_rng(seed)
        sizes = {"train": 40, "val": 10, "test": 10}
        np.savez(data, **{s: rng.random((n, 28, 28), dtype=np.float32) for s, n in sizes.items()})

    data, sweep = tmp_path / "data.npz", tmp_path / "sweep"
    write(0)
    args = ["data=npz", f"data.path={data}", "data.split=null", "k=1,5"]
    _sweep(args, sweep)
    old = data_digest(data)
    write(1)  # the same shape, other values
    before = _digests(sweep)
    line = _one_line(_sweep([*args, "resume=true", "schedule.epochs=2"], sweep, check=False))
    assert f"data file {data} changed since {sweep / 'fused' / 'group-0.ckpt'}" in line
    assert f"SHA-256 {data_digest(data)}, was {old}" in line
    assert _digests(sweep) == before


# --- every member checked before the first group trains ----------------------------------------
@pytest.mark.parametrize(
    "ks, expected",
    [
        ("5,0", "k=0): k must be an integer >= 1, got 0"),
        ("5,900000", "k=900000): one training step at k=900000"),
        ("5,1000000000", "k=1000000000): k=1000000000 is above its limit of 1,000,000"),
    ],
)
def test_every_member_is_checked_before_any_group_trains(
    ks: str, expected: str, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    line = _one_line(_sweep([f"k={ks}"], sweep, check=False))
    assert not list(sweep.rglob("metrics.json")) and not list(sweep.rglob("*.ckpt"))
    assert line.startswith("error: job 1 (") and expected in line  # names the member


def test_compile_is_refused_before_any_group_trains(tmp_path: Path) -> None:
    """The fused step is not the Lightning step that compile=true compiles: the second
    member's compile=true stops the sweep before the first member's group trains."""
    sweep = tmp_path / "sweep"
    line = _one_line(_sweep(["k=5", "compile=false,true"], sweep, check=False))
    assert line.startswith("error: hydra/launcher=fused does not compile its stacked training")
    assert "job 1 (" in line and line.endswith(
        "sets compile=true: drop it, or use the default launcher for compiled runs"
    )
    assert not list(sweep.rglob("metrics.json")) and not list(sweep.rglob("*.ckpt"))


def test_an_untrusted_target_is_refused_before_any_group_trains(tmp_path: Path) -> None:
    """The fused step computes this project's network and bounds itself: a member naming
    another class (here one of no trusted module) is refused, not silently trained as ours."""
    sweep = tmp_path / "sweep"
    line = _one_line(_sweep(["k=5", "model._target_=os.getcwd"], sweep, check=False))
    assert "model._target_='os.getcwd' is not one of this project's classes" in line
    assert not list(sweep.rglob("metrics.json")) and not list(sweep.rglob("*.ckpt"))


# --- one process per sweep directory -------------------------------------------------------------
def test_a_second_process_on_a_training_sweep_stops_in_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    log = tmp_path / "first.log"
    args = ["k=1,5", "schedule.epochs=100000"]  # trains until killed
    with open(log, "w") as out:
        first = subprocess.Popen(
            [sys.executable, str(TRAIN), *FUSED, *args, f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, env=no_wandb_env(), stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_for_file(sweep / "fused" / "group-0.ckpt", first)  # training, locks held
        line = _one_line(_sweep(args, sweep, check=False))
        assert line.startswith(f"error: sweep directory {sweep} is in use by another process")
        assert f"(PID {first.pid})" in line and "hydra.sweep.dir" in line
        run_dir = sweep / "0"  # a member's run directory is locked as well
        single = subprocess.run(
            [sys.executable, str(TRAIN), *TINY, "logger=none", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path, env=no_wandb_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert _one_line(single).startswith(f"error: run directory {run_dir} is in use")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)


def test_a_lock_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(victim, run_dir / LOCK_NAME)
    with pytest.raises(UserError) as err:
        acquire_run_lock(run_dir)
    release_run_lock(run_dir)
    assert "\n" not in str(err.value) and "is a symbolic link" in str(err.value)
    assert victim.read_text() == "keep me\n"


# --- the launcher's options ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, expected",
    [
        ("hydra.launcher.checkpoint_every_n_steps=-5", "must be a positive integer"),
        ("hydra.launcher.checkpoint_every_n_steps=abc", "must be a positive integer"),
        ("hydra.launcher.split_by_k=maybe", "split_by_k must be true, false or null"),
        ("+hydra.launcher.foo=1", "unknown launcher option hydra.launcher.foo"),
    ],
)
def test_a_bad_launcher_option_is_one_line(override: str, expected: str, tmp_path: Path) -> None:
    from hydra_plugins.iwae_fused_launcher.config import check_launcher_overrides

    value = override.split("=")[1]
    direct = check_launcher_overrides(["-m", "hydra/launcher=fused", "k=1", override])
    assert direct is not None and expected in direct
    if "foo" in override:
        assert "single_group, split_by_k, checkpoint_every_n_steps" in direct
    else:
        assert direct.endswith(f"got {value!r}" if value.isalpha() else f"got {value}")
    line = _one_line(_sweep(["k=1", override], tmp_path / "sweep", check=False))
    assert line == f"error: {direct}"  # the launcher says the same when the pre-check is absent
    assert not list((tmp_path / "sweep").rglob("*.ckpt"))


def test_good_launcher_options_and_other_launchers_pass() -> None:
    from hydra_plugins.iwae_fused_launcher.config import check_launcher_overrides

    fused = ["-m", "hydra/launcher=fused"]
    good = ["hydra.launcher.checkpoint_every_n_steps=5", "hydra.launcher.split_by_k=null"]
    assert check_launcher_overrides([*fused, *good, "hydra.launcher.single_group=true"]) is None
    assert check_launcher_overrides(["-m", "hydra.launcher.n_jobs=2"]) is None  # joblib's


def test_a_full_disk_in_a_fused_sweep_names_hydra_sweep_dir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    argv = [str(TRAIN), *FUSED, "k=1", f"hydra.sweep.dir={sweep}"]
    full_disk = (  # every torch.save fails as on a full disk
        "import errno, runpy, sys, torch\n"
        "def save(*a, **k):\n"
        f"    raise OSError({errno.ENOSPC}, 'No space left on device')\n"
        "torch.save = save\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", full_disk],
        cwd=tmp_path, env=no_wandb_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = _one_line(proc)
    assert line.startswith("error: no space left on the device writing ")
    assert "hydra.sweep.dir=<a disk with room>" in line and "hydra.run.dir" not in line
