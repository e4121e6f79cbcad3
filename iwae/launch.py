"""What a run needs to know about how it was launched: a sweep (its W&B group and tags), a
process's share of the CPU, and whether Lightning can start its DDP processes here.

Importing this module (``import iwae`` does) registers the OmegaConf resolvers that
``conf/logger/wandb.yaml`` and ``conf/hydra/launcher/slurm.yaml`` use:

- ``${iwae.sweep_group:}``: the sweep's name in a multirun (``multirun/2026-11-24/20-37-38``
  gives ``2026-11-24/20-37-38``), ``null`` for a single run. Every run of one sweep gets the
  same group, so the W&B dashboard shows them side by side.
- ``${iwae.sweep_tags:}``: this run's command-line overrides (``objective=vae``, ``k=5``).
- ``${iwae.run_id:<run dir>}``: the W&B run id of a run directory, the same at every start.
- ``${iwae.gpus_for:<accelerator>,<devices>}``: GPUs a SLURM job must request for a trainer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from iwae.errors import UserError

log = logging.getLogger(__name__)

# W&B's limits: a run's group at most 128 characters, each tag at most 64.
MAX_GROUP, MAX_TAG = 128, 64

# conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config on purpose
# (`hydra/launcher=joblib` is the name users know); Hydra then checks it against the plugin's
# schema, which catches misspelt keys, and warns that such matching is deprecated.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema"
)


def _hydra() -> DictConfig | None:
    """The running job's ``hydra`` node; None when the config was composed without a run."""
    try:
        return HydraConfig.get()
    except ValueError:
        return None


def sweep_name(sweep_dir: str | os.PathLike) -> str:
    """A sweep's name from its directory: what follows the last ``multirun`` in the path
    (the default ``multirun/<date>/<time>`` gives ``<date>/<time>``), else the whole path."""
    parts = [p for p in Path(sweep_dir).parts if p.strip("/")]
    if "multirun" in parts[:-1]:
        parts = parts[len(parts) - parts[::-1].index("multirun") :]
    return "/".join(parts)[-MAX_GROUP:]


def sweep_group() -> str | None:
    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return sweep_name(hc.sweep.dir)


def sweep_tags() -> list[str]:
    hc = _hydra()
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


for _name, _fn in {
    "iwae.sweep_group": sweep_group,
    "iwae.sweep_tags": sweep_tags,
    "iwae.gpus_for": gpus_for,
    "iwae.run_id": run_id,
}.items():
    OmegaConf.register_new_resolver(_name, _fn, replace=True)


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads for this process and return the number in use.

    ``threads`` wins if given. Otherwise a SLURM task takes its ``--cpus-per-task``: torch
    would start one thread per core of the whole node and fight the node's other jobs. A
    joblib worker needs nothing: joblib sets ``OMP_NUM_THREADS`` to cores / n_jobs in each
    worker, which torch obeys; nor does a DDP rank on the CPU, where Lightning does the same.
    """
    import torch  # here, not at the top: `import iwae` registers the resolvers, cheaply

    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    wanted = threads or (int(slurm_cpus) if slurm_cpus.isdigit() else None)
    if wanted is not None:
        if wanted < 1:
            raise UserError(f"threads must be a positive integer or null, got {wanted!r}")
        torch.set_num_threads(wanted)
        # Lightning's DDP launchers set cores / processes threads unless OMP_NUM_THREADS is
        # set, and the ranks they start inherit this environment.
        os.environ["OMP_NUM_THREADS"] = str(wanted)
    # In the run's train.log: what a slow parallel sweep's first suspect is.
    log.info("torch threads: %d", torch.get_num_threads())
    return torch.get_num_threads()


def resume_requested(resume: bool) -> bool:
    """``resume``, or this is a SLURM job that was requeued (preempted, or out of time and
    requeued by submitit): its run directory holds the last.ckpt to continue from."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return bool(resume) or (restarts.isdigit() and int(restarts) > 0)


def _starts_own_processes(trainer_cfg: DictConfig) -> bool:
    """Would Lightning start the other DDP processes by re-running the command line?"""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    several = not isinstance(devices, int) or devices * nodes > 1 or devices < 0
    relaunching = strategy.startswith("ddp") and not any(
        s in strategy for s in ("spawn", "fork", "notebook")
    )
    # srun (SLURM) and torchrun start every process themselves: nothing is re-run.
    external = "SLURM_PROCID" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    return relaunching and several and not external


def check_ddp_launch(trainer_cfg: DictConfig) -> None:
    """Refuse a local multirun whose runs would re-run the command line for their DDP ranks.

    Lightning starts ranks 1.. of ``strategy=ddp`` by re-running ``sys.argv``; inside a
    multirun that is the whole sweep again (or, in a joblib worker, no script at all), which
    hangs. One DDP run per command works, and on SLURM srun starts the ranks itself.
    """
    hc = _hydra()
    if hc is not None and hc.mode == RunMode.MULTIRUN and _starts_own_processes(trainer_cfg):
        raise UserError(
            f"trainer.strategy={trainer_cfg.get('strategy')} with several devices starts its "
            "other processes by re-running the command line, which a local sweep (-m) cannot "
            "do; run it without -m, or sweep with hydra/launcher=slurm (srun starts the "
            "processes)"
        )


def finish_wandb(trainer: Any, metrics: dict[str, Any]) -> None:
    """Put the final metrics in the W&B run's summary and close the run.

    Closing matters in a sweep: the basic launcher runs every job in one process, and an open
    W&B run would be taken over by the next job's WandbLogger (all jobs in one W&B run).
    """
    from pytorch_lightning.loggers import WandbLogger

    if not trainer.is_global_zero or not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "seed"}
        )
        wandb.finish()
