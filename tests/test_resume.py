"""Exact resume: a ``python train.py`` run SIGKILLed at a random point and restarted with
``resume=true`` ends with weights and metrics bit-identical (CPU) to an uninterrupted run.

The kill comes from inside the process (`SignalAt`) so that it lands at a chosen step and
point of the step; the slow tests add kills from outside at random times and repeated kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iwae.errors import UserError
from iwae.launch.assembly import resolve_ckpt_path
from iwae.launch.run import train
from tests.helpers import (
    HOOKS,
    ROOT,
    TINY,
    TINY_CKPT,
    assert_same_weights,
    comparable_metrics,
    compose_config,
    final_weights,
    no_wandb_env,
    read_metrics,
    reference_run,
    run_train,
    signal_at,
    wait_for_checkpoint_write,
)

STEPS = 30  # 3 epochs of 10 steps (TINY_CKPT)


def kill_seed() -> int:
    """Random kill points, reproducible: rerun with RESUME_TEST_SEED=<printed seed>."""
    return int(os.environ.get("RESUME_TEST_SEED", time.time_ns() % 100_000))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    """The uninterrupted run: final weights and metrics."""
    weights, metrics = reference_run(tmp_path_factory)
    assert metrics["train/steps"] == STEPS
    return weights, metrics


def assert_matches_reference(run_dir: Path, reference) -> None:
    weights, metrics = reference
    assert_same_weights(final_weights(run_dir), weights)
    resumed, expected = read_metrics(run_dir), dict(metrics)
    resumed.pop("model"), expected.pop("model")  # Hydra's group choice: "custom" in-process
    assert resumed == expected


def kill_then_resume(run_dir: Path, step: int, hook: str) -> bool:
    """SIGKILL a run at ``step``; check what it left; True if it left a checkpoint."""
    killed = run_train(
        [*TINY_CKPT, *signal_at(step, hook)],
        run_dir=run_dir,
        env=no_wandb_env(),
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()  # nothing that looks like a result
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():  # killed before the first checkpoint: resume=true starts afresh
        assert step < 4
        return False
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] <= step
    # What exact resumption needs besides weights and optimizer: the generators and the data
    # iterable's position (epoch, batches done), which order and binarization derive from.
    rng = next(v for k, v in saved["callbacks"].items() if k.startswith("RNGStateCheckpoint"))
    assert {"torch", "numpy", "python"} <= rng["ranks"][0].keys()
    data = next(v for k, v in saved.items() if k.endswith("DataModule"))
    assert data["train"]["epoch"] * 10 + data["train"]["batches_done"] == saved["global_step"]
    assert saved["optimizer_states"] and saved["lr_schedulers"] and "loops" in saved
    return True


def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path, reference):
    seed = kill_seed()
    rng = random.Random(seed)
    step, hook = rng.randrange(1, STEPS), rng.choice(HOOKS)
    print(f"RESUME_TEST_SEED={seed}: SIGKILL at step {step}, {hook}")
    had_checkpoint = kill_then_resume(tmp_path, step, hook)
    resumed = run_train(
        [*TINY_CKPT, "resume=true"], run_dir=tmp_path, env=no_wandb_env(), check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    restored = "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert restored == had_checkpoint
    assert_matches_reference(tmp_path, reference)


WITHOUT_EPOCHS = [o for o in TINY_CKPT if not o.startswith("schedule.")]
STOPS = {  # how the run's length is set, and the steps it trains
    "max_steps": ([*TINY_CKPT, "++trainer.max_steps=25"], 25),  # stops inside epoch 3
    "max_epochs": ([*TINY_CKPT, "++trainer.max_epochs=2"], 20),
    # The paper's schedule, in 2 stages of 1 and 3 epochs: the learning rate drops at epoch 1.
    "paper": ([*WITHOUT_EPOCHS, "schedule=paper", "schedule.stages=2"], 40),
    # Validation every second epoch: the first epoch end (step 10) validates nothing and
    # still writes last.ckpt.
    "val_every_2": ([*TINY_CKPT, "trainer.check_val_every_n_epoch=2"], 30),
}


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_resume_after_an_epoch_end_checkpoint_is_bit_identical(tmp_path, stop):
    """Killed just after the first epoch-end checkpoint, with the run's length set by
    ``trainer.max_steps`` (which made Lightning skip an epoch on resume), ``trainer.max_epochs``
    or the paper's schedule: the resumed run trains the same steps and ends bit-identical."""
    overrides, steps = STOPS[stop]
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference_dir.mkdir()
    expected = comparable_metrics(train(compose_config(overrides, reference_dir), reference_dir))
    assert expected["train/steps"] == steps
    killed = run_train(
        [*overrides, *signal_at(11)], run_dir=run_dir, env=no_wandb_env(), check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    resumed = run_train(
        [*overrides, "resume=true"], run_dir=run_dir, env=no_wandb_env(), check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(final_weights(run_dir), final_weights(reference_dir))
    metrics = read_metrics(run_dir)
    metrics.pop("model"), expected.pop("model")  # Hydra's group choice: "custom" in-process
    assert metrics == expected


def test_a_new_best_is_one_file_under_two_names(tmp_path):
    """When val/bound improves, last.ckpt is a hard link to best.ckpt (one serialisation);
    the next epoch end replaces last.ckpt with a new file and best.ckpt keeps its state."""
    train(compose_config([*TINY, "logger=none", "eval.enabled=false"], tmp_path), tmp_path)
    best, last = tmp_path / "checkpoints" / "best.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    assert best.stat().st_ino == last.stat().st_ino
    assert torch.load(last, weights_only=True)["global_step"] == 10
    train(
        compose_config(
            [*TINY, "logger=none", "eval.enabled=false", "schedule.epochs=2", "resume=true"],
            tmp_path,
        ),
        tmp_path,
    )
    assert (
        best.stat().st_ino != last.stat().st_ino
        or torch.load(best, weights_only=True)["global_step"] == 20
    )
    assert torch.load(last, weights_only=True)["global_step"] == 20


def test_validating_every_n_epochs_still_validates_the_last(tmp_path):
    """A run shorter than trainer.check_val_every_n_epoch ends with val/bound and best.ckpt."""
    overrides = [*TINY, "logger=none", "eval.enabled=false", "trainer.check_val_every_n_epoch=15"]
    metrics = train(compose_config(overrides, tmp_path), tmp_path)
    assert "val/bound" in metrics
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == 10


def test_resume_true_uses_last_if_there_is_one_else_starts_afresh(tmp_path):
    assert resolve_ckpt_path(None, tmp_path, resume=True) is None
    with pytest.raises(UserError, match="checkpoint not found"):  # `last` insists on one
        resolve_ckpt_path("last", tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_ckpt_path(None, tmp_path, resume=True) == str(last)
    assert resolve_ckpt_path(None, tmp_path, resume=False) is None


def test_resume_after_training_ended_reports_the_same_metrics(tmp_path):
    """Killed after the last checkpoint (during the final evaluation, say): the restart has no
    training left, and still reports the last validation bound and step counts."""
    overrides = [*TINY_CKPT, "schedule.epochs=1", "eval.enabled=false", "resume=true"]
    first = train(compose_config(overrides, tmp_path), tmp_path)
    (tmp_path / "metrics.json").unlink()
    again = train(compose_config(overrides, tmp_path), tmp_path)
    assert comparable_metrics(again) == comparable_metrics(first)
    assert "val/bound" in again and again["train/steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("kills", [1, 2, 3])
def test_repeated_sigkills_then_resume_is_bit_identical(tmp_path, reference, kills):
    """Kill, resume and kill again (each at a later random step), then finish."""
    seed = kill_seed() + kills
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, STEPS), kills))
    print(f"RESUME_TEST_SEED={seed - kills}: SIGKILLs at steps {steps}")
    for i, step in enumerate(steps):
        args = [*TINY_CKPT, *signal_at(step, rng.choice(HOOKS))] + (["resume=true"] if i else [])
        killed = run_train(args, run_dir=tmp_path, env=no_wandb_env(), check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = run_train(
        [*TINY_CKPT, "resume=true"], run_dir=tmp_path, env=no_wandb_env(), check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_matches_reference(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_from_outside_at_random_times_then_resume(tmp_path, reference):
    """SIGKILL from another process at a random moment after the run starts training (a step,
    validation, a checkpoint write), repeated until a run finishes; the result must match."""
    seed = kill_seed()
    rng = random.Random(seed)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "train.py",
        *TINY_CKPT,
        "resume=true",
        f"hydra.run.dir={tmp_path}",
    ]
    for attempt in range(10):
        log = tmp_path.parent / f"{tmp_path.name}-attempt{attempt}.log"  # a file: a pipe could fill
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=err)
        if attempt < 9 and wait_for_checkpoint_write(proc, tmp_path):
            time.sleep(rng.uniform(0, 0.3))  # anywhere: a step, validation, a checkpoint write
            proc.kill()  # SIGKILL
        proc.wait(timeout=300)
        stderr = log.read_text()
        assert proc.returncode in (0, -signal.SIGKILL), stderr[-3000:]
        if proc.returncode == 0:
            break
    assert attempt > 0, "no kill landed before the run finished"
    print(f"RESUME_TEST_SEED={seed}: finished after {attempt} kills")
    assert_matches_reference(tmp_path, reference)
