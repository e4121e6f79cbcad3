"""Running ``train.py`` as a user would (a subprocess) for the launcher, DDP and SLURM tests.

Sweeps and DDP must run outside pytest: Lightning's ``strategy=ddp`` starts rank 1 by
re-running the command line, which inside pytest is pytest itself.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "train.py"

# A run that finishes in seconds on a CPU: 200 training images (10 steps), a tiny evaluation.
TINY = [
    "data.split=[200,50,50]",
    "schedule.epochs=1",
    "eval.k=20",
    "eval.val_k=5",
    "trainer.enable_progress_bar=false",
]


def train_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a run: W&B offline, and its caches under ``tmp``, not in $HOME."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
        WANDB_DATA_DIR=str(tmp / "wandb-data"),
        WANDB_SILENT="true",
    )
    env.update(extra)
    return env


def run_train(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python train.py *args`` in ``cwd``; fails the test with the output's tail if it fails."""
    proc = subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=env or train_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc


def run_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's run directories (``0``, ``1``, ...) in job order."""
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def wandb_run_files(run_dir: Path) -> list[Path]:
    """The offline W&B runs in a run directory (``wandb/offline-run-*/run-*.wandb``)."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def wandb_string_field(value: str, field: int) -> bytes:
    """How protobuf stores a short string field: W&B 0.31 ships no reader for offline runs,
    but its run record (``RunRecord``: ``run_group`` is field 6, ``tags`` field 10) lies in
    the ``.wandb`` file as these bytes."""
    data = value.encode()
    assert len(data) < 128, "one-byte length only"
    return bytes([field << 3 | 2, len(data)]) + data


WANDB_GROUP, WANDB_TAG = 6, 10


def check_report(sweep_dir: Path, runs: int, *flags: str, timeout: float = 300) -> str | None:
    """``python -m iwae.reports.table1 <sweep>`` succeeds and its table1.csv has a row per run.
    Returns its output; None while the report module does not exist."""
    if importlib.util.find_spec("iwae.reports.table1") is None:
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "iwae.reports.table1", *flags, str(sweep_dir)],
        cwd=ROOT,
        env=train_env(sweep_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"iwae.reports.table1 failed:\n{proc.stderr[-4000:]}"
    rows = (sweep_dir / "table1.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + runs, rows
    return proc.stdout


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
