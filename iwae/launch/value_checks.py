"""The value checks that need no model, no data and no torch: the keys outside any group,
``eval.*``, the optimizer's settings, ``steps_per_batch``, the names a key chooses between
(`check_choices`), the largest value of each count (`iwae.launch.limits`), the paths a config
names (`iwae.launch.path_checks`) and the keys each group's class takes.

`iwae.launch.config_check` runs them on every run (`check_run_values`) and, on the config
composed from the command line, before Hydra starts (`check_plain_values`); nothing here
imports torch or Lightning, so that pre-check answers in a fraction of a second.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from omegaconf import DictConfig, ListConfig

from iwae.errors import UserError, check_bool, check_number, check_optional_int, check_positive_int

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range

# The names a key of the project's own classes chooses between, here so that they are checked
# before torch loads (each class checks them again; tests/test_bad_input.py keeps both equal):
# `iwae.objective_base.ESTIMATORS`, `datamodules.base.BINARIZATIONS`, `iwae.ais.INITS`,
# `iwae.training.nonfinite.NonFiniteGuard.ACTIONS`.
ESTIMATORS = ("reparam", "stl", "dreg")
ESTIMATORS_OF = {"iwae.objectives.Renyi": ("reparam", "stl"), "iwae.objectives.RWS": ()}
BINARIZATIONS = ("dynamic", "fixed")
AIS_INITS = ("q", "prior")
NONFINITE_ACTIONS = ("stop", "skip")
NONFINITE_GUARD = "iwae.training.nonfinite.NonFiniteGuard"
# A module name as ``import`` takes it: dotted identifiers.
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_plain_top_level(cfg: DictConfig) -> None:
    """The top-level keys whose check needs no torch (the pre-check runs it)."""
    check_positive_int("k", cfg.get("k"))
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    check_optional_int("threads", cfg.get("threads"), meaning=" (null: a share of the cores)")
    check_bool("resume", cfg.get("resume", False))
    check_bool("flush_denormal", cfg.get("flush_denormal", True))
    check_bool("compile", cfg.get("compile", False))
    check_plugin_names(cfg.get("plugins"))
    from iwae.launch.limits import check_count_limits
    from iwae.launch.path_checks import check_config_paths

    check_count_limits(cfg)
    check_choices(cfg)
    check_config_paths(cfg)


def check_plugin_names(plugins: object) -> list[str]:
    """``plugins``: module names (``[my_lab.bounds]``, or one comma-separated string as in
    ``$IWAE_PLUGINS``), as `iwae.launch.plugins` reads them; importing them, with the trust
    rules, comes later."""
    if plugins is None:
        return []
    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    if not isinstance(plugins, ListConfig | list):
        raise UserError(
            f"plugins must be a list of module names like [my_lab.bounds], got {plugins!r}"
        )
    for name in plugins:
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name.strip()):
            raise UserError(
                f"plugins: {name!r} is not a module name (dotted identifiers, like "
                "my_lab.bounds); name the module to import, not a file path"
            )
    return [str(n).strip() for n in plugins]


def check_choices(cfg: DictConfig) -> None:
    """Keys of the project's classes that name one of a few choices: each objective's
    estimator (staged objectives' stages included), ``data.binarization``, ``eval.ais.init``
    and the non-finite guard's action. A class of a plug-in module takes what it takes."""
    for key, node in _objective_nodes(cfg.get("objective"), "objective"):
        target = str(node.get("_target_", ""))
        if "estimator" in node and target.startswith("iwae.objectives."):
            allowed = ESTIMATORS_OF.get(target, ESTIMATORS)
            _check_choice(f"{key}.estimator", node.get("estimator"), allowed, target)
    data = cfg.get("data") or {}
    if str(data.get("_target_", "")).startswith("datamodules.") and "binarization" in data:
        _check_choice("data.binarization", data.get("binarization"), BINARIZATIONS)
    ais = (cfg.get("eval") or {}).get("ais") or {}
    _check_choice("eval.ais.init", ais.get("init", "q"), AIS_INITS)
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("_target_") == NONFINITE_GUARD:
            _check_choice(f"callbacks.{name}.action", node.get("action", "stop"), NONFINITE_ACTIONS)


def _objective_nodes(node: Any, key: str) -> list[tuple[str, DictConfig]]:
    """The objective's node and those nested in it (a staged objective's ``first``/``second``)."""
    if not isinstance(node, DictConfig):
        return []
    found = [(key, node)]
    for name, child in node.items():
        found += _objective_nodes(child, f"{key}.{name}")
    return found


def _check_choice(key: str, value: object, allowed: tuple[str, ...], owner: str = "") -> None:
    if value in allowed:
        return
    if not allowed:
        raise UserError(f"{owner.rsplit('.', 1)[-1]} takes no {key}; drop it")
    takes = f" ({owner.rsplit('.', 1)[-1]} takes these)" if owner in ESTIMATORS_OF else ""
    raise UserError(f"{key} must be one of {', '.join(allowed)}{takes}; got {value!r}")


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
        check_hmc_settings(ais_node)
        check_optional_int("eval.ais.images", ais_node.get("images"), meaning=" (all)")
        check_optional_int("eval.ais.seed", ais_node.get("seed"), 0, meaning=" (eval.seed)")


def check_hmc_settings(ais_node: Any) -> None:
    """``eval.ais.chains``, ``leapfrog``, ``step_size`` and ``target_accept`` (the defaults of
    conf/eval/default.yaml where unset), as `iwae.ais.check_settings` checks them, without
    torch."""
    check_positive_int("eval.ais.chains", ais_node.get("chains", 16))
    check_positive_int("eval.ais.leapfrog", ais_node.get("leapfrog", 10))
    size, accept = ais_node.get("step_size", 0.05), ais_node.get("target_accept", 0.65)
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size < math.inf:
        raise UserError(f"eval.ais.step_size must be a number > 0, got {size!r}")
    if isinstance(accept, bool) or not isinstance(accept, int | float) or not 0 < accept < 1:
        raise UserError(f"eval.ais.target_accept must be a number in (0, 1), got {accept!r}")


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
    from hydra.utils import get_class

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
