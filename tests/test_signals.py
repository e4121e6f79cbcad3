"""SIGTERM and SIGUSR1 (SLURM preemption / time limit): save last.ckpt, exit cleanly, resume.

A run signalled during training finishes its step, saves ``checkpoints/last.ckpt``, prints
one line saying how to continue, writes no metrics.json and exits with 128 + signal number;
``resume=true`` then ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import signal

import pytest
import torch

from iwae.run import train
from tests.conftest import compose_config
from tests.reliability_helpers import (
    TINY,
    assert_same_weights,
    comparable_metrics,
    final_weights,
    reference_run,
    run_train,
    signal_at,
)

SHORT = TINY  # 30 steps; the same config as the resume tests' reference run


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
    proc = run_train([*SHORT, *signal_at(step, sig="SIGTERM")], tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("preempted")]
    assert len(lines) == 1 and f"SIGTERM at step {step + 1}" in lines[0]
    assert "resume=true" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == step + 1  # the step in flight was finished, then saved
    resume_in_process(tmp_path, reference)


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
