"""One-line errors for command-line overrides that Hydra would reject with a multi-line report.

Hydra prints a misspelled key (``objective.kk=5``) or an unparsable override as five lines and
a hint about HYDRA_FULL_ERROR, and exits with status 1. `check_override_keys` composes the
config once before Hydra does and turns those failures into one line naming the key, the
closest existing keys, and the fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from iwae.errors import check_positive_int

_OTHER_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
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
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                return f"the sweep {text!r} has no values"
            prefix = text[: len(text) - len(text.lstrip("+~"))]
            out.append(f"{prefix}{override.get_key_element()}={first}")
        else:
            out.append(text)
    return out


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
    fraction of a second; values are checked later, where they are used.
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


def check_run_values(cfg: DictConfig) -> None:
    """Raise a one-line `UserError` for out-of-range values that would otherwise surface only
    when they are used: ``eval.k`` after the whole training run, for instance."""
    evaluation = cfg.get("eval") or {}
    names = ["val_k"] + (["k", "chunk_size"] if evaluation.get("enabled", True) else [])
    for name in names:
        if name in evaluation:
            check_positive_int(f"eval.{name}", evaluation[name])
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if max_epochs is not None:
        check_positive_int("trainer.max_epochs", max_epochs)
