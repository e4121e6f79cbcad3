"""One-line errors for bad command-line overrides and bad values, before any training.

Hydra prints a misspelled key (``objective.kk=5``) or an unparsable override as five lines and
a hint about HYDRA_FULL_ERROR, and exits with status 1. `check_override_keys` composes the
config once before Hydra does and turns those failures into one line naming the key, the
closest existing keys, and the fix.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from iwae.ais import check_settings, settings_from
from iwae.errors import UserError, check_bool, check_number, check_optional_int, check_positive_int
from iwae.evaluation import widest_layer
from iwae.launch.assembly import build
from iwae.launch.device import check_accelerator
from iwae.launch.memory_check import (
    check_eval_memory,
    check_fits,
    evaluation_bytes,
    training_step_bytes,
)
from iwae.launch.resolvers import in_multirun

_OTHER_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
_BAD_OVERRIDE = re.compile(r"Could not override '([^']+)'")


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

    Only composition is tried (no interpolation is resolved, nothing is built), so it costs a
    fraction of a second; values are checked by `check_run_values`, once per run of a sweep.
    """
    if any(a.split("=")[0] in _OTHER_CONFIG_FLAGS for a in argv):
        return None  # another primary config: let Hydra compose it and report
    overrides = _first_choices(_overrides(argv))
    if isinstance(overrides, str):
        return overrides
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        try:
            compose(config_name, overrides=overrides, return_hydra_config=True)
            return None
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
            value = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), "...")
            return (
                f"unknown config key {key!r}{_suggest(cfg, key)}; to add a new key on purpose "
                f"write +{key}={value}"
            )


def check_run_values(cfg: DictConfig) -> Any:
    """Raise a one-line `UserError` for any value that would otherwise fail (or be silently
    misread) later: during training, or after it, in the final evaluation.

    Scalars first, then the constructors' arguments, then the data (read here to learn the
    input size and training-set size), then whether the training step, the validation bound
    and the evaluation fit in memory. Returns the prepared datamodule, which a caller may use
    rather than read the data again (its preparation uses no global random state).
    """
    check_top_level(cfg)
    check_eval_values(cfg.eval, mode=str(cfg.get("mode", "train")))
    check_optimizer(cfg.optimizer)
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if max_epochs is not None:
        check_positive_int("trainer.max_epochs", max_epochs)
    for group in ("model", "objective", "data", "schedule", "optimizer"):
        check_arguments(group, cfg[group])
    objective, _ = build(cfg.objective), build(cfg.schedule)
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
    return datamodule


def check_top_level(cfg: DictConfig) -> None:
    """``k``, ``seed``, ``threads``, ``resume``: the keys outside any group."""
    check_positive_int("k", cfg.get("k"))
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    check_optional_int("threads", cfg.get("threads"), meaning=" (null: a share of the cores)")
    check_bool("resume", cfg.get("resume", False))
    check_bool("flush_denormal", cfg.get("flush_denormal", True))
    check_accelerator((cfg.get("trainer") or {}).get("accelerator", "auto"))


def check_steps_per_batch(cfg: DictConfig) -> int:
    """``steps_per_batch``, and no setting that counts Lightning batches as optimizer steps."""
    steps = check_positive_int("steps_per_batch", cfg.get("steps_per_batch", 1))
    if steps == 1:
        return steps
    trainer = cfg.get("trainer") or {}
    clashes = {
        "trainer.gradient_clip_val": trainer.get("gradient_clip_val") not in (None, 0, 0.0),
        "trainer.accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1) != 1,
        "trainer.val_check_interval": isinstance(trainer.get("val_check_interval"), int),
        "trainer.max_steps": trainer.get("max_steps") not in (None, -1),
    }
    for name, node in (cfg.get("callbacks") or {}).items():
        every = (node or {}).get("every_n_train_steps")
        clashes[f"callbacks.{name}.every_n_train_steps"] = bool(every)
    for key, clash in clashes.items():
        if clash:
            raise UserError(
                f"{key} counts or cuts Lightning batches, which hold {steps} optimizer steps "
                f"with steps_per_batch={steps}; drop {key} or set steps_per_batch=1"
            )
    return steps


def check_eval_values(evaluation: DictConfig, mode: str = "train") -> None:
    """Every ``eval.*`` key; ``k`` and ``chunk_size`` only when the evaluation runs."""
    check_positive_int("eval.val_k", evaluation.get("val_k", 1))
    check_bool("eval.enabled", evaluation.get("enabled", True))
    if evaluation.get("data_path") is not None and mode != "eval":
        raise UserError(
            "eval.data_path is for mode=eval (score a saved run on another file); "
            "to train on a file set data.path"
        )
    if not evaluation.get("enabled", True):
        return
    check_positive_int("eval.k", evaluation.get("k"))
    check_positive_int("eval.chunk_size", evaluation.get("chunk_size"))
    check_optional_int("eval.max_bytes", evaluation.get("max_bytes"), meaning=" (no cap)")
    ks = evaluation.get("bound_ks") or []
    if not isinstance(ks, ListConfig | list):
        raise UserError(f"eval.bound_ks must be a list of sample sizes like [1,5,50], got {ks!r}")
    for k in ks:
        check_positive_int("eval.bound_ks", k)
    check_positive_int("eval.seed", evaluation.get("seed", 0), minimum=0)
    check_number("eval.active_threshold", evaluation.get("active_threshold", 0.01))
    progress = evaluation.get("progress")
    if progress is not None:
        check_bool("eval.progress", progress)
    check_annealing_values(evaluation, mode)


def check_annealing_values(evaluation: DictConfig, mode: str) -> None:
    """``eval.ais.*``, ``eval.bdmc.*`` and ``eval.per_image``: one line before any work."""
    if check_bool("eval.per_image", evaluation.get("per_image", False)) and mode != "eval":
        raise UserError(
            "eval.per_image is for mode=eval (it writes the evaluation's log_likelihoods.csv); "
            "evaluate the run's checkpoint with mode=eval eval.per_image=true"
        )
    ais_node = evaluation.get("ais") or {}
    bdmc = evaluation.get("bdmc") or {}
    steps = check_positive_int("eval.ais.steps", ais_node.get("steps", 0), minimum=0)
    images = check_positive_int("eval.bdmc.images", bdmc.get("images", 0), minimum=0)
    if images:
        check_positive_int("eval.bdmc.steps", bdmc.get("steps"))
    if steps or images:
        check_settings(replace(settings_from(ais_node), steps=max(steps, 1)))
        check_optional_int("eval.ais.images", ais_node.get("images"), meaning=" (all)")
        check_optional_int("eval.ais.seed", ais_node.get("seed"), 0, meaning=" (eval.seed)")


def check_optimizer(optimizer: DictConfig) -> None:
    """Adam's settings: torch would refuse them only when training starts, with a traceback."""
    for name, low in (("lr", 0.0), ("eps", 0.0), ("weight_decay", 0.0)):
        if name in optimizer:
            check_number(f"optimizer.{name}", optimizer[name], low)
    betas = optimizer.get("betas")
    if betas is not None:
        if not isinstance(betas, ListConfig | list) or len(betas) != 2:
            raise UserError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            check_number("optimizer.betas", beta, 0.0, 1.0)


def check_arguments(group: str, node: DictConfig) -> None:
    """One line for a key the group's class does not take (Hydra would raise a TypeError
    inside a multi-line InstantiationException when building it)."""
    try:
        accepted = constructor_arguments(get_class(node._target_))
    except Exception as err:  # ImportError, or a _target_ that is not a class
        raise UserError(f"{group}._target_={node._target_!r} cannot be used ({err})") from None
    if accepted is None:
        return
    for key in node:
        if not str(key).startswith("_") and key not in accepted:
            name, takes = str(node._target_).rsplit(".", 1)[-1], ", ".join(sorted(accepted))
            raise UserError(
                f"{group}.{key} is not a setting of {name} (it takes {takes}); "
                f"a preset (experiment=...) sets it for another {group}: keep that {group}, or "
                "leave the preset out"
            )


def constructor_arguments(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` takes, following ``**kw`` up the base classes; None
    when a base class takes any keyword."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def check_memory(cfg: DictConfig, samples: int, datamodule: Any) -> None:
    """The training step, the validation bound and the final evaluation each fit in memory."""
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
