"""The hardware a run uses: the accelerator it asks for (checked before anything is built),
the device a saved checkpoint is evaluated on, and the process's share of the CPU cores."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from iwae.errors import UserError

log = logging.getLogger(__name__)

GPU_NAMES = ("gpu", "cuda")


def check_accelerator(accelerator: Any) -> None:
    """One line, before training, when ``trainer.accelerator`` asks for a GPU torch cannot
    see (Lightning would fail inside the Trainer with a multi-line MisconfigurationException)."""
    name = str(accelerator)
    if name in GPU_NAMES and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={name} asks for a GPU, but torch finds none here; "
            "use trainer.accelerator=cpu (or auto: a GPU when there is one)"
        )


def default_device() -> torch.device:
    """Where a checkpoint is evaluated when nothing says otherwise: CUDA if present."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def eval_device(cfg: Any) -> torch.device:
    """CUDA when the trainer config allows it and one is present, else the CPU."""
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    check_accelerator(accelerator)  # gpu where there is none: one line, not a silent CPU run
    use_cuda = accelerator in ("auto", *GPU_NAMES) and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def set_flush_denormal(enabled: bool) -> bool:
    """Flush subnormal floats to zero on the CPU (``torch.set_flush_denormal``) or not; return
    whether they are flushed (False also where the CPU cannot: not x86 with SSE3).

    Why: the IWAE gradient multiplies each sample's terms by its normalised weight, and the
    weights of poor samples (and their products with small sigmoids) are subnormal; x86 CPUs
    take a slow microcode path for every operation on a subnormal, which made the backward
    matrix products of a k = 50 step 6 times slower than the forward ones.
    """
    flushed = torch.set_flush_denormal(bool(enabled))
    log.info("subnormal floats flushed to zero: %s", flushed and bool(enabled))
    return flushed and bool(enabled)


def check_threads_fit(threads: int, cores: int | None = None) -> None:
    """Refuse a thread count above `iwae.launch.limits`' limit here too (a checkpoint's stored
    ``threads`` reaches `mode=eval` without the pre-check; thousands crash OpenMP with no
    message), and warn when it exceeds the logical CPUs of the machine the run runs on
    (which may not be the one that launched it): such threads only wait on each other. A
    warning, not a refusal: `mode=eval` on a smaller machine reads the run's own count."""
    from iwae.launch.limits import COUNT_LIMITS

    limit, why = COUNT_LIMITS["threads"]
    if threads > limit:
        raise UserError(f"threads={threads} is above its limit of {limit:,} ({why}); lower threads")
    cores = cores or os.cpu_count() or 1
    if threads > cores:
        log.warning(
            "threads=%d is more than the %d logical CPUs of this machine: the threads wait on "
            "each other; threads=%d or fewer (or null) is faster",
            threads,
            cores,
            cores,
        )


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads for this process and return the number in use.

    ``threads`` wins if given. Otherwise a SLURM task takes its ``--cpus-per-task``: torch
    would start one thread per core of the whole node and fight the node's other jobs. A
    joblib worker needs nothing: joblib sets ``OMP_NUM_THREADS`` to cores / n_jobs in each
    worker, which torch obeys; nor does a DDP rank on the CPU, where Lightning does the same.
    """
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    wanted = threads or (int(slurm_cpus) if slurm_cpus.isdigit() else None)
    if wanted is not None:
        if wanted < 1:
            raise UserError(f"threads must be a positive integer or null, got {wanted!r}")
        check_threads_fit(wanted)
        torch.set_num_threads(wanted)
        # Lightning's DDP launchers set cores / processes threads unless OMP_NUM_THREADS is
        # set, and the ranks they start inherit this environment.
        os.environ["OMP_NUM_THREADS"] = str(wanted)
    # In the run's train.log: what a slow parallel sweep's first suspect is.
    log.info("torch threads: %d", torch.get_num_threads())
    return torch.get_num_threads()
