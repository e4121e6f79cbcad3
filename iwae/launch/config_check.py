"""One-line errors for bad command-line overrides and bad values, before any training.

Hydra prints a misspelled key (``objective.kk=5``) or an unparsable override as five lines and
a hint about HYDRA_FULL_ERROR, and exits with status 1. `check_override_keys` composes the
config once before Hydra does and turns those failures into one line naming the key, the
closest existing keys, and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from iwae.errors import UserError, check_positive_int
from iwae.launch.resolvers import in_multirun
from iwae.launch.value_checks import (  # re-exported: the checks' one import path
    MAX_SEED,
    check_arguments,
    check_eval_values,
    check_optimizer,
    check_plain_top_level,
    check_steps_per_batch,
    constructor_arguments,
)

__all__ = [
    "MAX_SEED", "check_arguments", "check_ddp_launch", "check_eval_values", "check_memory",
    "check_optimizer", "check_override_keys", "check_plain_top_level", "check_plain_values",
    "check_run_values", "check_steps_per_batch", "check_top_level", "constructor_arguments",
    "search_space_as_arguments",
]  # fmt: skip

# Nothing above imports torch or Lightning: the pre-check (`check_override_keys`, the plain
# value checks) answers a typo before those load, which takes seconds. The checks that build
# objects import them inside.

_OTHER_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
_BAD_OVERRIDE = re.compile(r"Could not override '([^']+)'")
SEARCH_SPACE = "hydra.sweeper.params."


def search_space_as_arguments(argv: list[str]) -> list[str]:
    """``hydra.sweeper.params.optimizer.lr=interval(1e-4,3e-3)`` written as the Optuna sweeper
    reads a search space from the command line: ``optimizer.lr=interval(1e-4,3e-3)``.

    Hydra refuses a sweep inside its own config ("Sweeping over Hydra's configuration is not
    supported"), and OmegaConf would nest a dotted key (``params: {optimizer: {lr: ...}}``),
    so the entry cannot be set in place. The sweeper adds the command line's overrides to its
    ``params``, one of the same key replacing the config's: the same study."""
    out = []
    for word in argv:
        bare = word.lstrip("+")
        if not word.startswith("-") and bare.startswith(SEARCH_SPACE) and "=" in bare:
            out.append(bare[len(SEARCH_SPACE) :])
        else:
            out.append(word)
    return out


def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if "=" in a and not a.startswith("-")] + [
        a for a in argv if a.startswith("~") and "=" not in a
    ]


def _first_choices(overrides: list[str]) -> list[str] | str:
    """Overrides with every sweep (``k=1,5``, ``range(...)``) replaced by its first value, or
    a one-line error for an override Hydra cannot parse."""
    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as err:
            reason = str(err).strip().splitlines()[0]
            return f"cannot parse the override {text!r} ({reason}); write key=value"
        if override.is_sweep_override():
            reversed_ends = _reversed_interval(override)
            if reversed_ends:
                return reversed_ends
            first = _first_value(override)
            if first is None:
                continue  # glob() and the like: Hydra expands them; the key is checked there
            prefix = text[: len(text) - len(text.lstrip("+~"))]
            out.append(f"{prefix}{override.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def _first_value(override: Any) -> str | None:
    """A value of a sweep to compose with: its first choice or range value, an interval's
    start (the Optuna and Nevergrad sweepers' ``interval()`` is never iterated by Hydra)."""
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    if isinstance(value, IntervalSweep):
        return str(value.start)
    try:
        return next(iter(override.sweep_string_iterator()), None)
    except Exception:  # a sweep kind this Hydra cannot iterate
        return None


def _reversed_interval(override: Any) -> str | None:
    """One line for a search range Optuna refuses with a traceback (and an empty sweep
    folder): ``interval(high, low)``, or a log range (``tag(log, interval(...))``) that
    reaches zero or below."""
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    if not isinstance(value, IntervalSweep):
        return None
    if value.start > value.end:
        return (
            f"{override.input_line}: the interval's low end comes first; write "
            f"interval({value.end}, {value.start})"
        )
    if "log" in (value.tags or set()) and value.start <= 0:
        return (
            f"{override.input_line}: a log range must lie above 0 (its logarithm is searched), "
            f"got low end {value.start}; give a positive low end, or drop tag(log, ...)"
        )
    return None


def check_search_space(sweeper: DictConfig) -> None:
    """The search space of a sweeper's config (``hydra.sweeper.params``, a preset's
    included): each entry parses, and no range is reversed or a log range below zero."""
    params = sweeper.get("params") or {}
    parser = OverridesParser.create()
    for key, text in params.items():
        if not isinstance(text, str):
            continue
        try:
            override = parser.parse_override(f"{key}={text}")
        except HydraException as err:
            reason = str(err).strip().splitlines()[0]
            raise UserError(
                f"hydra.sweeper.params.{key}: cannot parse {text!r} ({reason})"
            ) from None
        problem = _reversed_interval(override)
        if problem:
            raise UserError(f"hydra.sweeper.params.{problem}")


def _suggest(cfg: DictConfig, key: str) -> str:
    """`` (did you mean ...?)`` from the keys beside ``key``'s place in ``cfg``."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=3, cutoff=0.6)
    if not close:
        return ""
    names = ", ".join(f"{parent + '.' if parent else ''}{c}" for c in close)
    return f" (did you mean {names}?)"


def check_override_keys(argv: list[str], conf_dir: Path, config_name: str = "config") -> str | None:
    """Compose the config with ``argv``'s overrides; None if Hydra accepts them, else one line.

    Then the values that need no torch (`check_plain_values`), so that such a run is refused
    before Hydra creates its directory. Nothing is built, so it costs a fraction of a second;
    the other values are checked by `check_run_values`, once per run of a sweep.
    """
    if any(a.split("=")[0] in _OTHER_CONFIG_FLAGS for a in argv):
        return None  # another primary config: let Hydra compose it and report
    overrides = _first_choices(_overrides(search_space_as_arguments(argv)))
    if isinstance(overrides, str):
        return overrides
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except HydraException as err:
            message = str(err)
            match = _BAD_OVERRIDE.search(message)
            if not match:
                first = message.strip().splitlines()[0]
                if first.startswith("Could not append"):  # +key=value for an existing key
                    first += " Drop the + to change its value"
                if "hydra/sweeper/optuna" in first:  # hparams_search=... without the plugin
                    first += "; install the Optuna sweeper: pip install -e '.[search]'"
                return first
            key = match.group(1)
            others = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
            try:
                cfg = compose(config_name, overrides=others, return_hydra_config=True)
            except HydraException:
                cfg = OmegaConf.create()
            if any(a.lstrip("+").startswith(f"{SEARCH_SPACE}{key}=") for a in argv):
                return (
                    f"the search space names {SEARCH_SPACE}{key}, but {key!r} is no config "
                    f"key{_suggest(cfg, key)}; search over an existing key"
                )
            # the value as written: a sweep stays a sweep in the hint
            given = _overrides(search_space_as_arguments(argv))
            value = next((o.split("=", 1)[1] for o in given if o.startswith(f"{key}=")), "...")
            return (
                f"unknown config key {key!r}{_suggest(cfg, key)}; to add a new key on purpose "
                f"write +{key}={value}"
            )
        # A sweep's first value stands in for composing, not for checking (``k=interval(1,5)``
        # starts at 1.0): its values are checked by each run; the rest is checked here.
        given = _overrides(search_space_as_arguments(argv))
        fixed = _without_sweeps(given)
        if len(fixed) < len(given):
            try:
                cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
            except HydraException:
                return None
    return check_plain_values(cfg, multirun="-m" in argv or "--multirun" in argv)


def _without_sweeps(overrides: list[str]) -> list[str]:
    """The overrides that set one value (not ``k=1,5``, ``range()``, ``interval()``)."""
    parser = OverridesParser.create()
    return [o for o in overrides if not parser.parse_override(o).is_sweep_override()]


def check_plain_values(cfg: DictConfig, multirun: bool = False) -> str | None:
    """One line for a bad value that needs no torch to see (``k=abc``, ``seed=-1``,
    ``eval.k=0``, ``optimizer.lr=-1``, ``hydra.sweeper.n_trials=0``), else None.

    Run on the composed config before Hydra starts, so such a run is refused before Hydra
    creates its run directory. A sweep is checked at its first values here and at each value
    by `check_run_values`. A value that cannot be read yet (an interpolation of Hydra's
    runtime) is left to that check too.
    """
    from iwae.launch.resolvers import register_resolvers

    register_resolvers()
    try:
        if str(cfg.get("mode", "train")) not in ("train", "eval"):
            return f"unknown mode {cfg.mode!r}; choose one of: train, eval"
        check_plain_top_level(cfg)
        check_scalar_values(cfg)
        if multirun:
            check_sweeper(cfg.hydra.sweeper)
    except UserError as err:
        return str(err)
    except Exception:  # noqa: BLE001 - unreadable until Hydra runs: the run's checks report it
        return None
    return None


def check_sweeper(sweeper: DictConfig) -> None:
    """An Optuna study that would end in Optuna's traceback: no trials to run, or a search
    range Optuna refuses."""
    if "optuna" not in str(sweeper.get("_target_", "")):
        return
    check_search_space(sweeper)
    n_trials = sweeper.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise UserError(
            f"hydra.sweeper.n_trials must be an integer >= 1 (the trials the study runs), "
            f"got {n_trials!r}"
        )


def check_scalar_values(cfg: DictConfig) -> None:
    """``eval.*``, the optimizer's settings and ``trainer.max_epochs``: values that need neither
    the data nor torch, checked before Hydra starts and again in each run."""
    check_eval_values(cfg.eval, mode=str(cfg.get("mode", "train")))
    check_optimizer(cfg.optimizer)
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if max_epochs is not None:
        check_positive_int("trainer.max_epochs", max_epochs)


@dataclass
class CheckedRun:
    """What `check_run_values` built to check the config, for the run to use as it is: each
    object is validated while it is built, and built once. The datamodule is prepared (its
    data read; preparing it draws no global random numbers); objective and schedule hold no
    random state. The model is not here: it is built after the run's seed is set."""

    datamodule: Any
    objective: Any
    schedule: Any


def check_run_values(cfg: DictConfig) -> CheckedRun:
    """Raise a one-line `UserError` for any value that would otherwise fail (or be silently
    misread) later: during training, or after it, in the final evaluation.

    Scalars first, then the constructors' arguments, then the data (read here to learn the
    input size and training-set size), then whether the training step, the validation bound
    and the evaluation fit in memory. Returns what it built on the way (`CheckedRun`).
    """
    check_top_level(cfg)
    check_scalar_values(cfg)
    for group in ("model", "objective", "data", "schedule", "optimizer"):
        check_arguments(group, cfg[group])
    from iwae.launch.assembly import build

    objective, schedule = build(cfg.objective), build(cfg.schedule)
    datamodule = build(cfg.data)
    datamodule.steps_per_batch = check_steps_per_batch(cfg)
    datamodule.prepare()
    n_train = len(datamodule.splits.train)
    if datamodule.batch_size > n_train:
        raise UserError(
            f"data.batch_size={datamodule.batch_size} is larger than the training set "
            f"({n_train} images); lower data.batch_size or use more data"
        )
    check_memory(cfg, objective.num_samples, datamodule)
    return CheckedRun(datamodule, objective, schedule)


def check_top_level(cfg: DictConfig) -> None:
    """``k``, ``seed``, ``threads``, ``resume``: the keys outside any group; the accelerator."""
    check_plain_top_level(cfg)
    check_accelerator((cfg.get("trainer") or {}).get("accelerator", "auto"))


def check_accelerator(accelerator: object) -> None:
    """`iwae.launch.device.check_accelerator`, imported when called: it loads torch."""
    from iwae.launch.device import check_accelerator as check

    check(accelerator)


def check_memory(cfg: DictConfig, samples: int, datamodule: Any) -> None:
    """The training step, the validation bound and the final evaluation each fit in memory."""
    import torch

    from iwae.evaluation import widest_layer
    from iwae.launch.assembly import build
    from iwae.launch.memory_check import (
        check_eval_memory,
        check_fits,
        evaluation_bytes,
        training_step_bytes,
    )

    with torch.device("meta"):  # shapes only: a model too big to build is caught here too
        model = build(cfg.model, input_dim=datamodule.input_dim)
    device = (cfg.trainer.get("accelerator", "auto"), cfg.trainer.get("strategy", "auto"))
    batch = datamodule.batch_size
    check_fits(
        training_step_bytes(model, samples, batch),
        f"one training step at k={cfg.k}, data.batch_size={batch} (widest layer "
        f"{widest_layer(model)})",
        "lower k or data.batch_size",
        device,
    )
    splits, val_k = datamodule.splits, cfg.eval.val_k
    images = min(datamodule.eval_batch_size, len(splits.val))  # per validation batch
    check_fits(
        evaluation_bytes(model, images, val_k, val_k, None),
        f"the validation bound at eval.val_k={val_k} over {images} images a batch",
        "lower eval.val_k or data.eval_batch_size",
        device,
    )
    if cfg.eval.get("enabled", True):
        images = min(datamodule.eval_batch_size, len(splits.test))
        check_eval_memory(model, cfg.eval, images, device)


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
    if in_multirun() and _starts_own_processes(trainer_cfg):
        raise UserError(
            f"trainer.strategy={trainer_cfg.get('strategy')} with several devices starts its "
            "other processes by re-running the command line, which a local sweep (-m) cannot "
            "do; run it without -m, or sweep with hydra/launcher=slurm (srun starts the "
            "processes)"
        )
