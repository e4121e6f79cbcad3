"""The OmegaConf resolvers the configs use, registered by whoever composes them (`train.py`,
the fused launcher, the tests' compose helper) through `register_resolvers`:

- ``${iwae.sweep_group:}``: the sweep's name in a multirun (``multirun/2026-11-24/20-37-38``
  gives ``2026-11-24/20-37-38``), ``null`` for a single run. Every run of one sweep gets the
  same group, so the W&B dashboard shows them side by side.
- ``${iwae.sweep_tags:}``: this run's command-line overrides (``objective=vae``, ``k=5``).
- ``${iwae.run_id:<run dir>}``: the W&B run id of a run directory, the same at every start.
- ``${iwae.gpus_for:<accelerator>,<devices>}``: GPUs a SLURM job must request for a trainer.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

# W&B's limits: a run's group at most 128 characters, each tag at most 64.
MAX_GROUP, MAX_TAG = 128, 64


def running_hydra() -> DictConfig | None:
    """The running job's ``hydra`` node; None when the config was composed without a run."""
    try:
        return HydraConfig.get()
    except ValueError:
        return None


def in_multirun() -> bool:
    hc = running_hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def parallel_sweep_job() -> bool:
    """Is this a job of a sweep whose jobs run side by side on one terminal (joblib)?"""
    hc = running_hydra()
    target = str((hc.launcher or {}).get("_target_", "")) if in_multirun() else ""
    return "joblib" in target.lower()


def sweep_name(sweep_dir: str | os.PathLike) -> str:
    """A sweep's name from its directory: what follows the last ``multirun`` in the path
    (the default ``multirun/<date>/<time>`` gives ``<date>/<time>``), else the whole path."""
    parts = [p for p in Path(sweep_dir).parts if p.strip("/")]
    if "multirun" in parts[:-1]:
        parts = parts[len(parts) - parts[::-1].index("multirun") :]
    return "/".join(parts)[-MAX_GROUP:]


def sweep_group() -> str | None:
    return sweep_name(running_hydra().sweep.dir) if in_multirun() else None


def sweep_tags() -> list[str]:
    hc = running_hydra()
    if hc is None:
        return []
    return [str(o)[:MAX_TAG] for o in hc.overrides.task]


def run_id(output_dir: str | os.PathLike) -> str:
    """A W&B run id that every start of one run directory shares: a requeued SLURM job, or
    ``resume=true hydra.run.dir=...``, continues the same W&B run (``resume: allow``) instead
    of leaving a second, partial one in the sweep's group."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def gpus_for(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node a SLURM job needs for ``Trainer(accelerator, devices)``: ``devices`` on a
    GPU accelerator, else None, which leaves ``--gpus-per-node`` out of the job script (a
    cluster without GPUs may reject even ``=0``). ``auto`` asks for none: say ``gpu``."""
    if str(accelerator) in ("gpu", "cuda") and isinstance(devices, int) and devices > 0:
        return devices
    return None


RESOLVERS = {
    "iwae.sweep_group": sweep_group,
    "iwae.sweep_tags": sweep_tags,
    "iwae.gpus_for": gpus_for,
    "iwae.run_id": run_id,
}


def register_resolvers() -> None:
    """Register the ``${iwae.*}`` resolvers; safe to call more than once."""
    for name, fn in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)
