"""What the fused launcher does with a batch of Hydra jobs.

Each job is prepared as ``hydra.core.utils.run_job`` prepares it (its sweep config, output
directory, ``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``, and its config resolved
while its own ``HydraConfig`` is set, so ``${hydra:runtime.output_dir}`` and the W&B sweep
resolvers give what a separate run would get); then the jobs are grouped and each group
trained in this process, one after another.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _save_config,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import OmegaConf, open_dict, read_write

from iwae.errors import UserError, exit_for
from iwae.launch.run_lock import acquire_run_lock
from iwae.training.checkpointing import DiskFullError, is_disk_full

from .config import check_launcher_options
from .fused_launcher import FusedLauncher

if TYPE_CHECKING:
    from iwae.fused.members import Member

SWEEP_DIR = "hydra.sweep.dir"

log = logging.getLogger(__name__)


def prepare_job(launcher: FusedLauncher, idx: int, overrides: Sequence[str]):
    """The job's sweep config, output directory and ``.hydra/`` files, as `run_job` makes them;
    returns the fused `Member` and the `JobReturn` to fill in."""
    from iwae.fused.members import Member

    assert launcher.hydra_context is not None and launcher.config is not None
    config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(overrides)
    )
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    HydraConfig.instance().set_config(config)
    output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(config)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    acquire_run_lock(output_dir, key=SWEEP_DIR)  # as each job of other launchers' sweeps does
    Path(output_dir).mkdir(parents=True, exist_ok=True)  # also where no lock is taken (DDP rank)
    if config.hydra.output_subdir is not None:
        hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", hydra_output)
        _save_config(hydra_cfg, "hydra.yaml", hydra_output)
        _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
    resolved = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))
    task_overrides = list(OmegaConf.to_container(config.hydra.overrides.task))
    choices = {k: v for k, v in config.hydra.runtime.choices.items() if v is not None}
    member = Member(
        idx, resolved, Path(output_dir).resolve(), choices, filter_overrides(task_overrides)
    )
    ret = JobReturn(
        overrides=task_overrides,
        cfg=task_cfg,
        hydra_cfg=hydra_cfg,
        working_dir=os.getcwd(),
        task_name=JobRuntime.instance().get("name"),
    )
    return member, ret


def launch(
    launcher: FusedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    from iwae.launch.resolvers import register_resolvers

    setup_globals()
    register_resolvers()  # the members' configs are resolved here, in the launcher's process
    assert launcher.config is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    original = HydraConfig.instance().cfg
    try:
        problem = check_launcher_options(launcher.options)
        if problem:
            raise UserError(problem)
        # one fused sweep per sweep directory: two would write the same members' runs and
        # group checkpoints (the lock is held for the life of the process, as a run's is)
        acquire_run_lock(sweep_dir, "sweep directory", SWEEP_DIR)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return _launch(launcher, job_overrides, initial_job_idx, sweep_dir)
    except UserError as e:
        exit_for(_for_sweep(e))
    except OSError as e:
        if not is_disk_full(e):
            raise
        exit_for(
            UserError(
                f"no space left on the device writing {e.filename or sweep_dir}; free some space "
                f"there (or pass {SWEEP_DIR}=<a disk with room>) and resume with resume=true"
            )
        )
    finally:
        HydraConfig.instance().cfg = original


def _for_sweep(error: UserError) -> UserError:
    """A full disk is worded for a single run (`write_bytes_atomic`: "pass hydra.run.dir=");
    a sweep's directories follow hydra.sweep.dir."""
    if isinstance(error, DiskFullError):
        return UserError(str(error).replace("hydra.run.dir=", f"{SWEEP_DIR}="))
    return error


def group_checkpoint(sweep_dir: Path, group: list[Member]) -> Path:
    """``<sweep dir>/fused/group-<jobs>.ckpt``: a group's checkpoint, named by its jobs."""
    return sweep_dir / "fused" / ("group-" + "-".join(str(m.job) for m in group) + ".ckpt")


def _launch(
    launcher: FusedLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    sweep_dir: Path,
) -> list[JobReturn]:
    from iwae.fused.members import group_members, training_device
    from iwae.fused.preflight import check_members, check_resume
    from iwae.fused.runs import train_group
    from iwae.training.resume import resume_requested

    prepared = [
        prepare_job(launcher, initial_job_idx + i, overrides)
        for i, overrides in enumerate(job_overrides)
    ]
    members = [member for member, _ in prepared]
    data_hashes = check_members(members)  # every member before any group trains
    options = launcher.options
    split_by_k = options["split_by_k"]
    if split_by_k is None:  # measured: benchmarks/fused.py; docs/performance.md
        split_by_k = (
            training_device(members[0].cfg.trainer.get("accelerator", "auto")).type == "cpu"
        )
    groups, note = group_members(members, split_by_k, options["single_group"])
    resumes = [any(resume_requested(m.cfg.get("resume")) for m in group) for group in groups]
    for group, resume in zip(groups, resumes):
        if resume:
            check_resume(group, group_checkpoint(sweep_dir, group), data_hashes)
    if note:
        print(note, flush=True)
    results: dict[int, dict | None] = {}
    every = options["checkpoint_every_n_steps"]
    for group, resume in zip(groups, resumes):
        path = group_checkpoint(sweep_dir, group)
        for member, metrics in zip(group, train_group(group, path, every, resume)):
            results[member.job] = metrics
    stopped = [m.label for m in members if results[m.job] is None]
    if stopped:
        raise UserError(
            f"{len(stopped)} of {len(members)} runs stopped on non-finite values: "
            + ", ".join(stopped)
        )
    returns = []
    for member, ret in prepared:
        ret.status = JobStatus.COMPLETED
        ret.return_value = (  # -val/bound, as train.py returns: a sweeper never sees test
            None if (val := (results[member.job] or {}).get("val/bound")) is None else -val
        )
        returns.append(ret)
    return returns
