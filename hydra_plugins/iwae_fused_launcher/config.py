"""The fused launcher's options, registered in Hydra's ConfigStore (as hydra-joblib-launcher
does); ``conf/hydra/launcher/fused.yaml`` extends it, so a misspelt option is refused.

The options are typed ``Any`` and checked here (`option_problem`), not by Hydra: Hydra's
structured-config merge refuses ``checkpoint_every_n_steps=abc`` as "Error merging override"
without saying what type it expected, and accepts ``-5``.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from hydra.core.config_store import ConfigStore

PREFIX = "hydra.launcher."


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.iwae_fused_launcher.fused_launcher.FusedLauncher"
    # Fail with one line instead of splitting configurations that cannot train together.
    single_group: Any = False
    # One group per k (true), or smaller k padded inside the largest k's group (false).
    # null: split on the CPU (a k=1 member padded to k=50 does 50 times its work); pad on a
    # GPU, where a batch-20 step costs launches, not arithmetic.
    split_by_k: Any = None
    # The group checkpoint is written at every epoch end, and also every N steps when set.
    checkpoint_every_n_steps: Any = None


OPTIONS = tuple(f.name for f in fields(FusedLauncherConf) if f.name != "_target_")


def option_problem(name: str, value: Any) -> str | None:
    """One line saying what is wrong with ``hydra.launcher.<name>=<value>``, or None."""
    key = PREFIX + name
    if name not in OPTIONS:
        return f"unknown launcher option {key}; hydra/launcher=fused has {', '.join(OPTIONS)}"
    if name == "single_group" and not isinstance(value, bool):
        return f"{key} must be true or false, got {value!r}"
    if name == "split_by_k" and value is not None and not isinstance(value, bool):
        return (
            f"{key} must be true, false or null (null: split by k on the CPU, pad on a GPU), "
            f"got {value!r}"
        )
    if name == "checkpoint_every_n_steps" and value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{key} must be a positive integer (or null: at epoch ends only), got {value!r}"
    return None


def check_launcher_options(options: Mapping[str, Any]) -> str | None:
    """The first problem among the launcher's options (as Hydra passed them), or None."""
    for name, value in options.items():
        problem = option_problem(name, value)
        if problem:
            return problem
    return None


def check_launcher_overrides(overrides: Iterable[str]) -> str | None:
    """For the command line's check before Hydra starts: one line for the first bad
    ``[+|++]hydra.launcher.<option>=<value>`` of a ``hydra/launcher=fused`` sweep, else None.

    Values are parsed with Hydra's own override parser, so ``5`` is an integer and ``true``
    a boolean as the launcher receives them; a sweep of values is checked value by value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    overrides = list(overrides)
    if "hydra/launcher=fused" not in overrides:
        return None
    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # worded by the check of unparsable overrides
        key = override.key_or_group
        if not key.startswith(PREFIX) or override.is_delete():
            continue
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        for one in values:
            problem = option_problem(key[len(PREFIX) :], one)
            if problem:
                return problem
    return None


ConfigStore.instance().store(
    group="hydra/launcher", name="iwae_fused", node=FusedLauncherConf, provider="iwae"
)
