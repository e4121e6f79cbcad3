"""SIGTERM and SIGUSR1 (SLURM preemption / time limit) and SIGINT (Ctrl-C): save last.ckpt,
exit cleanly, resume; a second Ctrl-C exits at once.

A run signalled during training finishes its step, saves ``checkpoints/last.ckpt``, prints
one line saying how to continue, writes no metrics.json and exits with 128 + signal number;
``resume=true`` then ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from iwae.launch.run import train
from tests.helpers import (
    ROOT,
    TINY_CKPT,
    assert_same_weights,
    comparable_metrics,
    compose_config,
    final_weights,
    no_wandb_env,
    pause_at,
    read_metrics,
    reference_run,
    run_train,
    signal_at,
    start_train,
    wait_for_checkpoint_write,
    wait_for_file,
)

SHORT = TINY_CKPT  # 30 steps; the same config as the resume tests' reference run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def resume_in_process(run_dir, reference) -> None:
    metrics = train(compose_config([*SHORT, "resume=true"], run_dir), run_dir)
    weights, expected = reference
    assert_same_weights(final_weights(run_dir), weights)
    metrics, expected = comparable_metrics(metrics), dict(expected)
    expected.pop("model"), metrics.pop("model")  # Hydra's group choice: absent in-process
    assert metrics == expected
    # last.ckpt rewritten in place: no stale last-v1.ckpt beside it for the next resume to miss
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_sigterm_saves_then_exits_cleanly_and_resumes_exactly(tmp_path, reference):
    step = 7
    proc = run_train(
        [*SHORT, *signal_at(step, sig="SIGTERM")], run_dir=tmp_path, env=no_wandb_env(), check=False
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("preempted")]
    assert len(lines) == 1 and f"SIGTERM at step {step + 1}" in lines[0]
    assert "resume=true" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == step + 1  # the step in flight was finished, then saved
    resume_in_process(tmp_path, reference)


def saved_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_ctrl_c_from_outside_saves_exits_130_and_resumes_exactly(tmp_path, reference):
    """SIGINT from another process (as a terminal's Ctrl-C sends it) while a step runs: the
    step is finished and saved, not cut short by a KeyboardInterrupt."""
    log = tmp_path.parent / f"{tmp_path.name}.log"
    proc = start_train([*SHORT, *pause_at(5)], tmp_path, log)
    wait_for_file(tmp_path / "paused", proc)  # inside step 6's on_train_batch_start
    proc.send_signal(signal.SIGINT)
    (tmp_path / "go").touch()
    assert proc.wait(timeout=300) == 128 + signal.SIGINT
    stderr = log.read_text()
    lines = [line for line in stderr.splitlines() if line.startswith("preempted")]
    assert len(lines) == 1 and "SIGINT at step 6" in lines[0] and "resume=true" in lines[0]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert saved_step(tmp_path) == 6 and not (tmp_path / "metrics.json").exists()
    resume_in_process(tmp_path, reference)


def test_a_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    proc = run_train(
        [*SHORT, *signal_at(6, sig="SIGINT", times=2)],
        run_dir=tmp_path,
        env=no_wandb_env(),
        check=False,
    )
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    assert "second SIGINT: exiting at once" in proc.stderr
    assert "preempted" not in proc.stderr and "Traceback" not in proc.stderr
    # Nothing saved after the signal: last.ckpt is the periodic one from step 4, not step 7.
    assert saved_step(tmp_path) == 4 and not (tmp_path / "metrics.json").exists()


def test_sigusr1_in_process_saves_exits_and_restores_handlers(tmp_path, reference):
    before = signal.getsignal(signal.SIGUSR1)
    cfg = compose_config([*SHORT, *signal_at(12, "on_before_optimizer_step", "SIGUSR1")], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train(cfg, tmp_path)
    assert exit_info.value.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 13 and not (tmp_path / "metrics.json").exists()
    resume_in_process(tmp_path, reference)


@pytest.mark.slow
def test_signal_at_the_last_step_saves_after_validation(tmp_path, reference):
    """Arriving in the last step, the signal is handled when training ends (after the final
    validation): the saved checkpoint is complete, and resuming only evaluates."""
    cfg = compose_config([*SHORT, *signal_at(30, "on_train_batch_end", "SIGTERM")], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train(cfg, tmp_path)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    )
    resume_in_process(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_from_outside_at_random_times_then_resume(tmp_path, reference):
    """SIGTERM from another process at random times until a run finishes: during training it
    saves and exits 143; before training starts or after it ends the default action ends
    the process (nothing to save). Whatever the timing, the finished run matches."""
    seed = time.time_ns() % 100_000
    rng = random.Random(seed)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "train.py", *SHORT, "resume=true", f"hydra.run.dir={tmp_path}"]
    codes = []
    for attempt in range(10):
        log = tmp_path.parent / f"{tmp_path.name}-attempt{attempt}.log"  # a file: a pipe could fill
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=err)
        if attempt < 9 and wait_for_checkpoint_write(proc, tmp_path):
            time.sleep(rng.uniform(0, 0.3))  # anywhere: a step, validation, a checkpoint write
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        stderr = log.read_text()
        codes.append(proc.returncode)
        assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        if proc.returncode == 0:
            break
    assert 128 + signal.SIGTERM in codes  # at least one signal landed in training
    print(f"seed {seed}: exit codes {codes}")
    weights, expected = reference[0], dict(reference[1])
    assert_same_weights(final_weights(tmp_path), weights)
    resumed = read_metrics(tmp_path)
    resumed.pop("model"), expected.pop("model")  # Hydra's group choice: "custom" in-process
    assert resumed == expected
