"""Test-only callbacks and helpers for the reliability tests.

The callbacks are added to a real ``python train.py`` run from the command line
(``+callbacks.fault._target_=tests.reliability_helpers.SignalAt``), so the process under test
is the one a user runs; they deliver a real signal to it at an exact, chosen point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from tests.conftest import ROOT

# Points in a training step where a signal can land, in the order Lightning reaches them.
HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")

TINY = [
    "logger=none",
    "data.split=[200,50,50]",  # 10 steps an epoch
    "schedule.epochs=3",
    "eval.k=10",
    "eval.val_k=5",
    "trainer.enable_progress_bar=false",
    "callbacks=frequent",
    "callbacks.periodic.every_n_train_steps=4",
]


class SignalAt(Callback):
    """Sends signal ``sig`` to this process in ``hook`` when ``global_step == step``.

    SIGKILL ends the process at once (no handler, no cleanup): a kill at that exact point.
    """

    def __init__(
        self, step: int, hook: str = "on_train_batch_start", sig: str = "SIGKILL", times: int = 1
    ):
        if hook not in HOOKS:
            raise ValueError(f"hook must be one of {HOOKS}")
        self.step, self.hook, self.signum = step, hook, signal.Signals[sig]
        self.times, self.sent = times, False

    def _maybe_send(self, trainer: pl.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and not self.sent:
            self.sent = True  # a handled signal (SIGTERM) lets the step finish: send it once
            for _ in range(self.times):  # os.kill runs the handler before it returns
                os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_train_batch_start")

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_before_optimizer_step")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_send(trainer, "on_train_batch_end")


class PauseAt(Callback):
    """At ``global_step == step``: write ``<run dir>/paused`` and wait (at most ``timeout``
    seconds) until the test creates ``<run dir>/go``. Holds a run in training, lock held, for
    as long as a test needs: no guessing how long a run takes on a loaded machine."""

    def __init__(self, step: int, timeout: float = 300) -> None:
        self.step, self.timeout = step, timeout

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        run_dir = Path(trainer.default_root_dir)
        (run_dir / "paused").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not (run_dir / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def pause_at(step: int) -> list[str]:
    """Overrides that add a `PauseAt` callback to a train.py run."""
    return [f"+callbacks.pause._target_={__name__}.PauseAt", f"+callbacks.pause.step={step}"]


def start_train(args: list[str], run_dir: Path, log: Path) -> subprocess.Popen:
    """``python train.py <args> hydra.run.dir=<run_dir>`` in the background, output to ``log``
    (a file: a pipe nobody reads could fill and stall the run)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


DIGEST_BEFORE = "last_ckpt_sha256_before_fault"


class NonFiniteAt(Callback):
    """At ``global_step == step``: fill the batch with NaN (``what="batch"``), or put an inf
    into one gradient after backward (``what="gradient"``)."""

    def __init__(self, step: int, what: str = "batch") -> None:
        self.step, self.what = step, what

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():  # for the test: the last good checkpoint, before the fault
            (Path(trainer.default_root_dir) / DIGEST_BEFORE).write_text(file_digest(last))
        if self.what == "batch":
            batch.fill_(float("nan"))  # the minibatch is a fresh tensor (indexed copy)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.what == "gradient" and trainer.global_step == self.step:
            param = next(p for p in pl_module.parameters() if p.grad is not None)
            param.grad.view(-1)[0] = float("inf")


def run_train(
    args: list[str], run_dir: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python train.py <args> hydra.run.dir=<run_dir>`` from the repository root."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def signal_at(
    step: int, hook: str = "on_train_batch_start", sig: str = "SIGKILL", times: int = 1
) -> list[str]:
    """Overrides that add a `SignalAt` callback to a train.py run."""
    return [
        f"+callbacks.fault._target_={__name__}.SignalAt",
        f"+callbacks.fault.step={step}",
        f"+callbacks.fault.hook={hook}",
        f"+callbacks.fault.sig={sig}",
        f"+callbacks.fault.times={times}",
    ]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's last checkpoint (written after the final step)."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"]


def comparable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything in metrics.json except wall-clock time."""
    return {k: v for k, v in metrics.items() if k != "train/seconds"}


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return comparable_metrics(json.loads((run_dir / "metrics.json").read_text()))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_run(tmp_path_factory: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The uninterrupted TINY run (in-process): final weights and metrics.

    Kept in the session's base temp directory, so the test modules that compare against it
    (resume, signals) share one run.
    """
    from iwae.run import train
    from tests.conftest import compose_config

    run_dir = Path(tmp_path_factory.getbasetemp()) / "reliability-reference"
    if not (run_dir / "metrics.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        train(compose_config(TINY, run_dir), run_dir)
    return final_weights(run_dir), read_metrics(run_dir)


def wait_for_checkpoint_write(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> bool:
    """Wait until ``proc`` writes ``last.ckpt`` (so it is training) or exits; True if it wrote.

    Signals sent after this land in training whatever the machine's load, not in start-up.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.exists() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != before:
            return True
        time.sleep(0.02)
    return False
