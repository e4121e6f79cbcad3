"""One run of ``train.py``, from its command line to its metrics: the checks made before Hydra
starts (`prepare_command`) and the job Hydra runs (`run_job`).

``train.py`` and the Python API (`iwae.api.train`) both go through these two functions, so a
run started either way makes the same checks, trusts the same plug-ins and writes the same
files. Nothing here imports torch at import time: the pre-check answers before it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from iwae.errors import UserError
from iwae.launch.cli import (
    check_command_overrides,
    is_eval_command,
    remove_refused_run_dir,
    run_dir_is_new,
)
from iwae.launch.config_check import search_space_as_arguments
from iwae.launch.run_lock import claim_output_dir, run_lock


def prepare_command(argv: list[str]) -> tuple[list[str], bool]:
    """What ``train.py`` does with its command line before Hydra starts: a search space moved
    where the Optuna sweeper reads it, every override checked (one line for a typo or a bad
    value), a ``mode=eval`` kept out of a training run's directory, and the output directory
    checked and locked.

    Returns (the arguments to hand Hydra, whether the run directory is new: only then may a
    refused run remove it). Raises a one-line `UserError`.
    """
    argv = search_space_as_arguments(list(argv))
    check_command_overrides(argv)
    if is_eval_command(argv):  # (imports torch: only for mode=eval)
        from iwae.launch.eval_checkpoint import own_output_dir

        argv = own_output_dir(argv)  # mode=eval never writes into a training run
    new_run_dir = run_dir_is_new(argv)  # before the lock below creates the directory
    claim_output_dir(argv)  # before Hydra, whose logging setup fails with a traceback
    return argv, new_run_dir


def run_job(cfg: DictConfig, new_run_dir: bool) -> dict[str, Any]:
    """The job Hydra runs for ``train.py``: trust the plug-ins, then train or evaluate in
    Hydra's output directory under its lock; return the metrics. A run refused with a
    `UserError` in a directory it created leaves no directory behind."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from iwae.launch.plugins import trust_run  # (no torch: an untrusted module is said first)

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("mode", "train") not in ("train", "eval"):  # a sweep's later values
        raise UserError(f"unknown mode {cfg.mode!r}; choose one of: train, eval")
    with run_lock(output_dir):  # one process per run directory (each job of a sweep too)
        try:
            # plugins=, $IWAE_PLUGINS, entry points: imported first; in a joblib or SLURM
            # worker too (the job's config holds `plugins`, the environment travels)
            trust_run(cfg)
            from iwae.launch.eval_checkpoint import evaluate_checkpoint
            from iwae.launch.run import train

            run = evaluate_checkpoint if cfg.get("mode") == "eval" else train
            return run(cfg, output_dir)
        except UserError:
            # refused before any result: leave no run directory behind. A sweep's job
            # directory is the sweep's own (Hydra made it for this job); it goes only if it
            # holds nothing but what Hydra and the lock wrote, as a new run's does.
            if new_run_dir or HydraConfig.get().mode == RunMode.MULTIRUN:
                remove_refused_run_dir(output_dir, HydraConfig.get().job.name)
            raise
