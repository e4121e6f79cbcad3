"""Resuming a run: the same training loop whether or not ``trainer.max_steps`` is set, and a
refusal, in one line, of a resume that would change what the run is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loops.fit_loop import _FitLoop

from iwae.errors import UserError

log = logging.getLogger(__name__)


class EpochExactFitLoop(_FitLoop):
    """Lightning's fit loop, restarting from an epoch-end checkpoint the same way with
    ``max_steps`` set as without it.

    With ``max_steps != -1`` Lightning 2.6 treats training as "iteration based" and marks the
    loop as restarting even from a checkpoint written after the epoch's validation (epoch
    processed, not yet completed): it replays that epoch's end, whose batch counters are full,
    as one more pass of the epoch loop that trains nothing but counts as an epoch. A 4-epoch
    quickstart run killed after its first epoch ended after 3 (600 steps, not 800). Without
    ``max_steps`` Lightning syncs ``completed`` with ``processed`` and starts the next epoch
    afresh, which is exact. ``max_steps`` still stops
    training where it says (that check is in ``done``, not here); a checkpoint from inside an
    epoch restarts as before, since an unfinished epoch marks the loop restarting either way.
    """

    def _iteration_based_training(self) -> bool:
        return False


def use_epoch_exact_fit_loop(trainer: pl.Trainer) -> None:
    """Swap in `EpochExactFitLoop`, keeping the trainer's epoch loop (which holds max_steps), as
    ``Trainer.__init__`` builds its own."""
    old = trainer.fit_loop
    loop = EpochExactFitLoop(trainer, min_epochs=old.min_epochs, max_epochs=old.max_epochs)
    loop.epoch_loop = old.epoch_loop
    trainer.fit_loop = loop


# --- what may change on resume -----------------------------------------------------------------
# Keys (and everything below them) that a resume may change: they say how the run is observed,
# evaluated, logged or where it is written, not what is trained. Every other key defines the
# run (k, seed, objective.*, model.*, data.*, optimizer.*, schedule.*, the rest of trainer.*)
# and must be as the checkpoint was trained with.
MAY_CHANGE = (
    "eval",  # the final test evaluation and the validation bound: measure, never train
    "threads",
    "logger",
    "paths",
    "ckpt_path",
    "resume",
    "mode",
    "init_from",  # a resumed fine-tune run continues from its own weights, not init_from's
    "plugins",  # whom this command trusts (iwae.launch.plugins), not what is trained
    "compile",  # the same step, compiled or not: a speed setting
    "data.root",  # where the dataset files are, not which data (data.path names a file: refused)
    "data.download",  # how missing files are fetched: they are checked against their checksums
    "data.base_url",
    "data.verify_local",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",  # how often train/bound is logged
    "trainer.accelerator",  # the same run continued on another kind of device
    "trainer.max_epochs",  # where to stop: training up to the old point is unchanged
    "trainer.max_steps",
    "callbacks",  # checkpoint frequency, preemption signals, non-finite action, diagnostics
)
# Callbacks that shape training itself: without rng_state a resumed run draws other noise.
MUST_MATCH = ("callbacks.rng_state",)
# A schedule may be extended (more epochs or stages, the same learning rates up to the old end).
EXTENDABLE = ("schedule.epochs", "schedule.stages")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"latent_dims": [50]}}`` -> ``{"model.latent_dims": [50]}``."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def may_change(key: str, stored: Any, new: Any) -> bool:
    """May ``key`` go from ``stored`` to ``new`` when a run is resumed?"""
    if _under(key, MUST_MATCH):
        return False
    if key in EXTENDABLE:
        return isinstance(stored, int) and isinstance(new, int) and new >= stored
    return _under(key, MAY_CHANGE)


MISSING = "<absent>"
# Keys added after runs were already being trained, with the value that reproduces what a run
# without them did: a checkpoint that lacks one resumes with that value, and only with it.
BEFORE_THE_KEY = {
    "steps_per_batch": 1,
    "flush_denormal": False,
    "data.image_shape": None,  # data=npz/folder: the shape the file's arrays give
}


def refused_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: <stored> there, <new> here`` for every change a resume may not make."""
    old, now = flatten(stored), flatten(new)
    changes = []
    for key in sorted(old.keys() | now.keys()):
        before, after = old.get(key, BEFORE_THE_KEY.get(key, MISSING)), now.get(key, MISSING)
        if before != after and not may_change(key, before, after):
            changes.append(f"{key}: {before!r} there, {after!r} here")
    return changes


# What every refusal of a changed resume ends with.
MAY_CHANGE_HINT = (
    "(only eval.*, threads, plugins, compile, logger, callbacks and the trainer's progress, "
    "logging and stopping settings may change; see docs/reliability.md)"
)


def shown_changes(changes: list[str]) -> str:
    """The first four of `refused_changes`' lines, joined, and how many more there are."""
    return "; ".join(changes[:4]) + (f" (and {len(changes) - 4} more)" if changes[4:] else "")


def check_resume_config(
    stored: Mapping[str, Any] | None, new: Mapping[str, Any], ckpt_path: str | os.PathLike
) -> None:
    """Refuse, with one line naming the changed keys, to resume ``ckpt_path`` (trained with
    ``stored``, its ``iwae_config``) under a config ``new`` that would change the run.

    Without this a resume with another k, objective, seed or data split continued the old state
    and recorded the new values, and a new ``optimizer.lr`` was silently overridden by the
    restored optimizer.
    """
    if stored is None:  # written before configs were stored: nothing to compare against
        log.warning("%s holds no run config; cannot check that the resume matches it", ckpt_path)
        return
    changes = refused_changes(stored, new)
    if changes:
        raise UserError(
            f"resuming {ckpt_path} would change the run: {shown_changes(changes)}; resume with "
            f"the values it was trained with, or start a new run in a new hydra.run.dir "
            f"{MAY_CHANGE_HINT}"
        )


def resume_requested(resume: bool) -> bool:
    """``resume``, or this is a SLURM job that was requeued (preempted, or out of time and
    requeued by submitit): its run directory holds the last.ckpt to continue from."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return bool(resume) or (restarts.isdigit() and int(restarts) > 0)


def stored_data_file(checkpoint: Mapping[str, Any], datamodule: Any) -> Mapping[str, Any] | None:
    """``{"path", "sha256"}`` of the data file a checkpoint was trained on, from the state
    Lightning saves under the datamodule's class name; None for the paper's datasets (their
    files are pinned by checksums in the config) and checkpoints written before it was stored."""
    state = checkpoint.get(type(datamodule).__qualname__)
    saved = state.get("data_file") if isinstance(state, Mapping) else None
    return saved if isinstance(saved, Mapping) else None


def check_resume_data(
    stored: Mapping[str, Any] | None,
    sha256: str | None,
    source: str | os.PathLike,
    fix: str = "start a new run in a new hydra.run.dir",
) -> None:
    """Refuse, in one line naming the file and both SHA-256s, to resume ``source`` on a data
    file (``data=npz``/``folder``) whose bytes are not those it was trained on (``stored``).

    ``data.path`` is compared with the config, but a file rewritten in place (or two images of
    a folder replaced) has the same path and shape: the resumed run trained on other data and
    recorded the new checksum as if it had been trained on it throughout.
    """
    if stored is None or sha256 is None or stored.get("sha256") == sha256:
        return
    raise UserError(
        f"data file {stored.get('path')} changed since {source} was written (SHA-256 {sha256}, "
        f"was {stored.get('sha256')}); restore the file it was trained on to resume, or {fix}"
    )
