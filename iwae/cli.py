"""Command-line checks that run before Hydra composes the config.

Hydra reports an unknown config-group option as a multi-line error; this prints one line with
the valid choices instead and exits with status 2.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(conf_dir: Path, group: str) -> list[str]:
    folder = conf_dir / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """Return a one-line error for the first ``group=option`` naming no config file, else None.

    Handles sweeps (``objective=vae,iwae``) and Hydra's ``+``/``~``/``++`` prefixes.
    """
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "." in key and not key.startswith("hydra/"):
            continue  # a key inside a group (k=5, data.batch_size=...) is checked later
        options = group_options(conf_dir, key)
        if not options:
            continue
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice != "null" and choice not in options:
                return f"unknown {key} {choice!r}; choose one of: {', '.join(options)}"
    return None


def exit_on_bad_overrides(argv: list[str] | None = None) -> None:
    from iwae.config_check import check_override_keys  # misspelled keys, unparsable overrides

    argv = sys.argv[1:] if argv is None else argv
    message = check_overrides(argv) or check_override_keys(argv, CONF_DIR)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def quiet_third_party_noise() -> None:
    """Drop messages that mislead or distract on every run: Lightning's advert for its cloud
    logger, its hint to use ``srun`` whenever SLURM is installed (runs here are launched by
    Hydra's submitit launcher instead), and a deprecation inside Lightning's own code."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")
    # conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config on
    # purpose (`hydra/launcher=joblib` is the name users know); Hydra then checks it against
    # the plugin's schema, which catches misspelt keys, and warns that such matching is
    # deprecated.
    warnings.filterwarnings(
        "ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema"
    )
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
