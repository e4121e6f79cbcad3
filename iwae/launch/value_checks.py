"""The value checks that need no model, no data and no torch: the keys outside any group,
``eval.*``, the optimizer's settings, ``steps_per_batch``, and the keys each group's class
takes.

`iwae.launch.config_check` runs them on every run (`check_run_values`) and, on the config
composed from the command line, before Hydra starts (`check_plain_values`); nothing here
imports torch or Lightning, so that pre-check answers in a fraction of a second.
"""

from __future__ import annotations

import inspect

from omegaconf import DictConfig, ListConfig

from iwae.errors import UserError, check_bool, check_number, check_optional_int, check_positive_int

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def check_plain_top_level(cfg: DictConfig) -> None:
    """The top-level keys whose check needs no torch (the pre-check runs it)."""
    check_positive_int("k", cfg.get("k"))
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    check_optional_int("threads", cfg.get("threads"), meaning=" (null: a share of the cores)")
    check_bool("resume", cfg.get("resume", False))
    check_bool("flush_denormal", cfg.get("flush_denormal", True))


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
        from dataclasses import replace

        from iwae.ais import check_settings, settings_from  # torch: only when AIS runs

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
