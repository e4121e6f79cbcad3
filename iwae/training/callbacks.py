"""Callbacks that make a run survive kills, preemption and non-finite values.

- `RNGStateCheckpoint` puts every global random generator into each checkpoint, so a resumed
  run draws the same noise as an uninterrupted one (Lightning saves none of them);
  `LoggedMetricsCheckpoint` does the same for the last validation metrics.
- `NonFiniteGuard` stops (or skips the step) before a NaN/inf loss or gradient reaches the
  weights, so the last checkpoint stays good.
- `BestAndLastCheckpoint` keeps ``best.ckpt`` and a ``last.ckpt`` that is never stale;
  `PeriodicCheckpoint` also writes ``last.ckpt`` every N steps (``callbacks=frequent``).
- `PreemptionCheckpoint` turns SIGTERM/SIGUSR1 (SLURM's preemption and time-limit signals) and
  SIGINT (Ctrl-C) into "save last.ckpt at the next step boundary, then exit".
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from iwae.errors import UserError, check_positive_int
from iwae.training.checkpointing import link_atomic

log = logging.getLogger(__name__)


# --- random generators -------------------------------------------------------------------------
def collect_rng_state() -> dict[str, Any]:
    """This process's global generators, as tensors and plain data (loadable with
    ``weights_only=True``: numpy's key array is stored as a tensor, not a pickled ndarray)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])


class RNGStateCheckpoint(Callback):
    """Saves the global torch (CPU and CUDA), numpy and Python generators in every checkpoint
    and restores them on resume.

    Training noise (the reparameterisation samples) and the validation bound draw from the
    global torch generator; data order and dynamic binarization have their own per-epoch
    generators in the data iterable, whose state Lightning saves itself. Each rank's state is
    kept (gathered on save), so DDP ranks continue their own streams.
    """

    def __init__(self) -> None:
        self._world_size, self._rank = 1, 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._world_size, self._rank = trainer.world_size, trainer.global_rank

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank during trainer.save_checkpoint (a collective), so gathering is safe.
        states = [collect_rng_state()]
        if self._world_size > 1 and torch.distributed.is_initialized():
            states = [None] * self._world_size
            torch.distributed.all_gather_object(states, collect_rng_state())
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        if self._rank < len(ranks):
            restore_rng_state(ranks[self._rank])
        else:
            log.warning(
                "checkpoint has no RNG state for rank %d; its noise will differ", self._rank
            )


class LoggedMetricsCheckpoint(Callback):
    """Keeps the last logged validation metrics (``val/bound``) in each checkpoint.

    Lightning keeps ``trainer.callback_metrics`` in memory only: a run resumed from a checkpoint
    written after its last validation (killed during the final test evaluation, say) would
    finish without ``val/bound`` in metrics.json. Restored in ``on_fit_start``, which runs
    even when the restored run has no training left.
    """

    def __init__(self, prefix: str = "val/") -> None:
        self.prefix = prefix
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        metrics = self._trainer.callback_metrics if self._trainer is not None else {}
        return {k: float(v) for k, v in metrics.items() if k.startswith(self.prefix)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for key, value in self._restored.items():
            trainer.callback_metrics.setdefault(key, torch.tensor(value))
        self._restored = {}


# --- preemption --------------------------------------------------------------------------------
class PreemptionCheckpoint(Callback):
    """On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C): finish the current step, save ``last.ckpt``,
    exit with 128 + signum (143, 138, 130). A second SIGINT exits at once, saving nothing.

    The handler only records the signal: saving inside a signal handler could catch the
    optimizer mid-update. The checkpoint is written at the next ``on_train_batch_end``, the
    same point where periodic checkpoints are written, so resuming from it is exact. Handlers
    that were installed before (Lightning's SLURM requeue, submitit's) run after the save.
    Under DDP the ranks agree on stopping through one all-reduce per step.

    SIGINT: Lightning 2.6 installs no handler for it; Python's default raises KeyboardInterrupt
    wherever the main thread is (mid-update included), which Lightning's ``fit`` turns into
    "attempting graceful shutdown" and ``sys.exit(1)`` without saving. Ours replaces it while
    training; before and after training the default stays (train.py reports it in one line).

    Args:
        signals: names of the signals to handle.
    """

    def __init__(
        self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1", "SIGINT")
    ) -> None:
        try:
            self.signals = [
                signal.Signals[name] if isinstance(name, str) else signal.Signals(name)
                for name in signals
            ]
        except (KeyError, ValueError) as err:
            raise UserError(f"callbacks.preemption.signals: unknown signal {err}") from None
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.received is not None:
            # The user insists: stop now. os.write and os._exit are safe inside a handler (a
            # print could be re-entered); a checkpoint write cut short leaves the previous file.
            os.write(2, b"second SIGINT: exiting at once; last.ckpt is the last one saved\n")
            os._exit(128 + signum)
        self.received = sig
        again = " (Ctrl-C again to exit at once, losing the steps since the last checkpoint)"
        os.write(
            2,
            f"received {sig.name}: saving last.ckpt after this step, then exiting"
            f"{again if sig == signal.SIGINT else ''}\n".encode(),
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.received_sigterm:  # arrived between Lightning's handler and ours
            self.received = signal.SIGTERM
        # Lightning registers its handlers just before training starts; ours go on top of them.
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if ends_epoch(trainer, idx):  # see ends_epoch: saved after the next step, or at the end
            return
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if stop:
            self._save_and_exit(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.received is not None:  # arrived during the last validation
            self._save_and_exit(trainer)
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException
    ) -> None:
        self._restore_handlers()

    def _save_and_exit(self, trainer: pl.Trainer) -> None:
        sig = self.received or signal.SIGTERM
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        previous = self._previous.get(sig)
        self._restore_handlers()
        # e.g. a requeue handler, now that the checkpoint exists; not Python's SIGINT default,
        # which would raise KeyboardInterrupt instead of the clean exit below.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(sig, None)
        if trainer.is_global_zero:
            print(
                f"preempted by {sig.name} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}): saved {path}; continue with the same command plus "
                f"resume=true hydra.run.dir={Path(trainer.default_root_dir)}",
                file=sys.stderr,
                flush=True,
            )
        raise SIGTERMException(128 + int(sig))


def ends_epoch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Is this the epoch's last training batch? Not a point to checkpoint at: Lightning (2.6)
    resumes from there without replaying the end of the epoch as the uninterrupted run does
    (its validation samples from the global generator), and the resumed weights were measured
    to differ. The epoch-end checkpoint, written after validation, follows a moment later."""
    return batch_idx + 1 >= trainer.num_training_batches


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` holds the latest state at every epoch end and the
    final state when training ends, not only the state of the last new best, and whose
    ``best.ckpt`` costs no second serialisation.

    Lightning 2.6 rewrites ``last.ckpt`` only in a call that also saved a top-k checkpoint
    (``_last_global_step_saved == global_step`` in ``on_validation_end``): once ``val/bound``
    stops improving, ``last.ckpt`` stays at the best step. Why a subclass, of the ways to fix it:
    a second ``ModelCheckpoint(save_top_k=0, save_last=True)`` never saves a top-k checkpoint, so
    the same condition keeps it from writing ``last.ckpt`` until ``on_train_end`` (and two of them
    version each other's ``last.ckpt``); ``save_on_train_epoch_end`` only moves the same check
    between ``on_train_epoch_end`` (the default here, after validation) and ``on_validation_end``.
    Here both hooks save ``last.ckpt`` through Lightning's own ``_save_last_checkpoint`` (which
    also records ``last_model_path``) when the parent did not, so the save points stay
    Lightning's: after validation, at the end of an epoch that did not validate
    (``trainer.check_val_every_n_epoch`` > 1), never at the epoch's last batch (`ends_epoch`).

    When ``val/bound`` improves, ``best.ckpt`` and ``last.ckpt`` hold the same state: the second
    is a hard link to the first (`link_atomic`), not a second ``torch.save`` and fsync. Each
    file is later replaced by a new file (atomic writes), never written in place, so the link
    never lets one change the other.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # No validation at this epoch's end (or none at all): last.ckpt is written here. After
        # a validation it was written already at this step, and this is a no-op.
        self._save_last_unless_saved(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training can stop between save points (max_steps mid-epoch): keep the final state.
        self._save_last_unless_saved(trainer)

    def _save_last_unless_saved(self, trainer: pl.Trainer) -> None:
        # Skipped when this step is saved already (the parent saved a new best and last.ckpt).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        same_state = self._last_checkpoint_saved if self._just_saved(trainer) else None
        if same_state is None or Path(filepath).name != self._last_name() or same_state == filepath:
            super()._save_checkpoint(trainer, filepath)
            return
        # last.ckpt right after best.ckpt at the same step: the same state, already on disk.
        # Every rank takes this branch alike, so no rank enters save_checkpoint's collectives.
        if trainer.is_global_zero:
            link_atomic(same_state, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath

    def _just_saved(self, trainer: pl.Trainer) -> bool:
        return bool(self._last_checkpoint_saved) and (
            self._last_global_step_saved == trainer.global_step
        )

    def _last_name(self) -> str:
        return f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"


class ValidateLastEpoch(Callback):
    """Validates the last epoch whatever ``trainer.check_val_every_n_epoch`` is, so that a run
    that validates every n epochs still ends with ``val/bound`` of its final weights (and a
    ``best.ckpt``), also when it is shorter than n epochs. Lightning validates only epochs whose
    number is a multiple of n; here the last epoch's n becomes 1 when it starts."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1


class PeriodicCheckpoint(Callback):
    """Writes ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (besides the epoch-end
    ModelCheckpoint), so that a kill loses at most that many steps.

    Not a second ``ModelCheckpoint(save_last=True)``: that one also saves at an epoch's last
    batch (see `ends_epoch`), and two of them writing one ``last.ckpt`` version each other's
    file (``last-v1.ckpt``).
    """

    def __init__(self, every_n_train_steps: int) -> None:
        self.every = check_positive_int(
            "callbacks.periodic.every_n_train_steps", every_n_train_steps
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step % self.every == 0 and not ends_epoch(trainer, idx):
            trainer.save_checkpoint(last_checkpoint_path(trainer))


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where ``resume=true`` looks: the ModelCheckpoint's directory, else ``<run>/checkpoints``."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
