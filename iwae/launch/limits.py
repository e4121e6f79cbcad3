"""Upper bounds on every count a config holds, checked before any work and without torch.

A count with no upper bound let a typo (three zeros too many) through every check: a process
with ``threads=10000`` died in OpenMP with a segfault and no message, ``eval.ais.steps=1e9``
allocated 8 GB for its schedule, and ``eval.ais.leapfrog``, ``eval.bdmc.images`` or
``eval.bound_ks`` ran for days. Each limit below lies far above the paper's settings (k up to
50 in training and 5,000 in evaluation, 3,280 epochs, batches of 20) and above any study a
hundred times larger, and far below what crashes or runs for weeks. Memory is estimated apart,
once the data's size is known (`iwae.launch.memory_check`); the AIS work per image is bounded
here too (`AIS_GRADIENTS_PER_IMAGE`), since chains x steps x leapfrog multiply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from iwae.errors import UserError

MILLION = 1_000_000

# key (``*`` matches any one key) -> (largest value, why that is enough). For a list (data.split,
# eval.bound_ks, model widths) the limit holds for every entry.
COUNT_LIMITS: dict[str, tuple[int, str]] = {
    "k": (MILLION, "200 times the paper's k = 5,000"),
    "objective.*.k": (MILLION, "200 times the paper's k = 5,000"),
    "threads": (1024, "OpenMP aborts or crashes far above the cores there are"),
    "steps_per_batch": (10_000, "optimizer steps inside one Lightning batch"),
    "eval.k": (MILLION, "200 times the paper's k = 5,000"),
    "eval.val_k": (MILLION, "200 times the paper's k = 5,000"),
    "eval.chunk_size": (MILLION, "samples per chunk; eval.k at most"),
    "eval.bound_ks": (MILLION, "one k = max(eval.bound_ks) evaluation serves the curve"),
    "eval.ais.steps": (MILLION, "the schedule alone takes 8 bytes a step"),
    "eval.ais.chains": (100_000, "chains per image"),
    "eval.ais.leapfrog": (1_000, "leapfrog steps per HMC move; 10 is usual"),
    "eval.ais.images": (10 * MILLION, "images to evaluate"),
    "eval.bdmc.images": (100_000, "simulated images, each run forward and backward"),
    "eval.bdmc.steps": (MILLION, "annealing steps each way"),
    "data.batch_size": (MILLION, "images per optimizer step"),
    "data.eval_batch_size": (MILLION, "images per evaluation batch"),
    "data.split": (100 * MILLION, "images per split"),
    "data.subset": (100 * MILLION, "images per split"),
    "data.n_validation": (100 * MILLION, "images"),
    "model.latent_dims": (MILLION, "units per layer"),
    "model.hidden_dims": (MILLION, "units per layer"),
    "model.channels": (MILLION, "channels per layer"),
    "objective.m": (MILLION, "groups of k samples"),
    "objective.switch_epoch": (MILLION, "epochs"),
    "schedule.epochs": (MILLION, "300 times the paper's 3,280 epochs"),
    "schedule.stages": (MILLION, "stages (the paper schedule's class allows 8)"),
    "trainer.max_epochs": (MILLION, "300 times the paper's 3,280 epochs"),
    "trainer.max_steps": (10**10, "optimizer steps"),
    "trainer.log_every_n_steps": (10**10, "optimizer steps"),
    "trainer.check_val_every_n_epoch": (MILLION, "epochs"),
    "trainer.num_sanity_val_steps": (MILLION, "validation batches"),
    "trainer.limit_train_batches": (10**10, "batches"),
    "trainer.limit_val_batches": (10**10, "batches"),
    "trainer.devices": (4096, "devices per node"),
    "trainer.num_nodes": (MILLION, "nodes"),
    "callbacks.*.every_n_train_steps": (10**10, "optimizer steps"),
    "callbacks.*.every_n_steps": (10**10, "optimizer steps"),
    "callbacks.*.every_n_epochs": (MILLION, "epochs"),
    "callbacks.*.check_every_n_steps": (10**10, "optimizer steps"),
    "callbacks.*.max_skips": (10**10, "optimizer steps"),
    "callbacks.*.every_seconds": (10**9, "seconds"),
    "callbacks.*.draws": (100_000, "extra backward passes per diagnostic"),
    "callbacks.*.save_top_k": (MILLION, "checkpoints kept"),
    "hydra.sweeper.n_trials": (MILLION, "trials"),
    "hydra.sweeper.n_jobs": (4096, "trials asked at once"),
    "hydra.sweeper.sampler.n_startup_trials": (MILLION, "trials"),
}

# Gradient evaluations of the model per image that AIS or BDMC may spend: chains x steps x
# (leapfrog + 1). 10^9 is over 500 times 16 chains x 10,000 steps x (10 + 1), a long annealing
# run; above it one image takes hours on a CPU thread, and a test set months.
AIS_GRADIENTS_PER_IMAGE = 10**9


def check_count_limits(cfg: DictConfig) -> None:
    """A one-line `UserError` for the first count above its limit in `COUNT_LIMITS`, or for
    AIS or BDMC settings whose work per image exceeds `AIS_GRADIENTS_PER_IMAGE`. A value that
    is not an integer (null, a fraction, a string) is left to the checks of its kind; one
    that cannot be read yet (a Hydra interpolation before Hydra runs) is checked in the run."""
    for pattern, (limit, why) in COUNT_LIMITS.items():
        for key, value in _values(cfg, pattern):
            for count in _integers(value):
                if count > limit:
                    raise UserError(
                        f"{key}={_plain(value)} is above its limit of {limit:,} ({why}); "
                        f"lower {key}"
                    )
    check_annealing_work(cfg.get("eval") or {})


def check_annealing_work(evaluation: Any) -> None:
    """Chains x steps x leapfrog of AIS (``eval.ais.*``) and BDMC (``eval.bdmc.steps`` with
    the same chains and leapfrog) within `AIS_GRADIENTS_PER_IMAGE` per image."""
    ais = evaluation.get("ais") or {}
    bdmc = evaluation.get("bdmc") or {}
    chains, leapfrog = ais.get("chains", 16), ais.get("leapfrog", 10)
    runs = []
    if _is_count(ais.get("steps")) and ais.get("steps"):
        runs.append(("eval.ais.steps", ais.get("steps")))
    if _is_count(bdmc.get("images")) and bdmc.get("images"):
        runs.append(("eval.bdmc.steps", bdmc.get("steps")))
    for name, steps in runs:
        if not all(_is_count(v) for v in (chains, leapfrog, steps)):
            continue  # a bad type: the value checks word it
        work = chains * steps * (leapfrog + 1)
        if work > AIS_GRADIENTS_PER_IMAGE:
            raise UserError(
                f"eval.ais.chains={chains} x {name}={steps} x (eval.ais.leapfrog={leapfrog} + 1) "
                f"is {work:.2g} model gradients per image, above the limit of "
                f"{AIS_GRADIENTS_PER_IMAGE:.0e} (hours per image on a CPU); lower one of them"
            )


def _values(cfg: DictConfig, pattern: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` for every key matching ``pattern`` (``*``: any one key) that can be
    read; a missing key or an unresolvable interpolation yields nothing."""
    head, star, tail = pattern.partition("*")
    if not star:
        value = _select(cfg, pattern)
        if value is not None:
            yield pattern, value
        return
    node = _select(cfg, head.rstrip("."))
    if isinstance(node, DictConfig):
        for name in node.keys():
            key = f"{head}{name}{tail}"
            value = _select(cfg, key)
            if value is not None:
                yield key, value


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve
        return None


def _integers(value: Any) -> Iterator[int]:
    """The integers in ``value``: itself, or the entries of a (nested) list."""
    if isinstance(value, ListConfig | list | tuple):
        for item in value:
            yield from _integers(item)
    elif _is_count(value):
        yield value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> str:
    if isinstance(value, ListConfig):
        return str(OmegaConf.to_container(value))
    return str(value)
