"""A progress line now and then when no progress bar is shown: a run whose stdout is a file
(CI, nohup, a SLURM log) otherwise prints nothing from its start until its closing table.

``trainer.enable_progress_bar: null`` shows Lightning's bar only on a terminal
(`iwae.launch.assembly.progress_bar_enabled`); when there is no bar and stdout is not a
terminal, `ProgressLines` prints, at most once every ``every_seconds``::

    step 1200/30000 (4%)  train/bound -98.31  41.2 steps/s  time left 11 min 39 s
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from iwae.errors import check_number


class ProgressLines(Callback):
    """Print steps done of the total, the last logged training bound, the speed and the time
    left, at most once every ``every_seconds`` (0: after every step), when no progress bar is
    shown and stdout is not a terminal.

    Args:
        every_seconds: the least time between two lines.
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        self.every_seconds = check_number("callbacks.progress.every_seconds", every_seconds)
        self._active = False
        self._last = self._start = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = trainer.progress_bar_callback is not None
        self._active = trainer.is_global_zero and not bar and not sys.stdout.isatty()
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run's speed counts its own steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._active:  # a terminal (the bar shows progress): nothing to do per step
            return
        now = time.monotonic()
        if now - self._last < self.every_seconds:
            return
        self._last = now
        print(self.line(trainer, now - self._start), flush=True)

    def line(self, trainer: pl.Trainer, seconds: float) -> str:
        """The progress line after ``seconds`` of this process's training."""
        step = trainer.global_step
        per_batch = getattr(trainer.datamodule, "steps_per_batch", 1) or 1
        total = int(trainer.estimated_stepping_batches) * per_batch
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        bound = trainer.callback_metrics.get("train/bound")
        if bound is not None:
            parts.append(f"train/bound {float(bound):.2f}")
        rate = (step - self._first_step) / seconds if seconds > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.1f} steps/s")
            if total > step:
                parts.append(f"time left {_duration((total - step) / rate)}")
        return "  ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
