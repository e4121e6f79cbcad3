"""Command-line checks that run before Hydra composes the config.

Hydra reports an unknown config-group option as a multi-line error; this prints one line with
the valid choices instead and exits with status 2. It reads the command line with Hydra's own
override parser and asks Hydra's config loader for each group's options (this project's
files and every installed plugin's: ``hydra/launcher=basic``, ``submitit_local``, Optuna), so
it never rejects what Hydra accepts: list values (``'logger=[csv,wandb]'``), sweeps
(``k=1,5``, ``choice()``, ``range()``, ``interval()``), shell completion and ``--info``.

It also holds what ``train.py`` decides around a run without loading torch or Lightning
(nothing here imports them, so a refusal comes in about a second): whether a refused run may
remove the directory Hydra made for it (`run_dir_is_new`, `remove_refused_run_dir`), and the
one line for an Optuna trial that ended before any validation (`no_validation_error`).

Importing this module installs the warning filters of `quiet_third_party_noise`: the one
import-time effect in the project, kept to the command line's module. `train.py` imports it,
and so does every joblib worker when it unpickles ``train.main``, which matters because a
worker's Hydra composes the job's config, and warns, before any function of ours runs.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from iwae.errors import UserError, exit_for
from iwae.launch.config_check import search_space_as_arguments

__all__ = ["search_space_as_arguments"]  # train.py rewrites its command line with it

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Hydra's flags that take the next word as their value (``-sc install=bash``, ``--cfg job``).
_FLAGS_WITH_VALUE = {
    "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
    "-c", "--cfg", "-p", "--package", "--experimental-rerun",
}  # fmt: skip
# Flags after which nothing runs, or anything may follow: no check at all.
_NO_RUN_FLAGS = {"-sc", "--shell-completion", "-h", "--help", "--hydra-help", "--version"}
_OPTIONAL_VALUE_FLAGS = {"-i", "--info"}  # --info [all|config|defaults|...]


def hydra_overrides(argv: list[str]) -> list[str] | None:
    """The overrides in ``argv`` as Hydra sees them (flags and their values left out); None
    when a flag means no job runs (shell completion, help), so there is nothing to check."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in _NO_RUN_FLAGS:
            return None
        if word.startswith("-"):
            skip = name in _FLAGS_WITH_VALUE and "=" not in word
            continue
        out.append(word)
    return [w for w in out if not _is_info_topic(argv, w)]


def _is_info_topic(argv: list[str], word: str) -> bool:
    """``--info config``: ``config`` is the flag's value, not an override."""
    i = argv.index(word)
    return i > 0 and argv[i - 1] in _OPTIONAL_VALUE_FLAGS and "=" not in word


def group_options(conf_dir: Path, group: str) -> list[str]:
    """The options of ``group`` that Hydra knows: this project's files and installed plugins'
    configs (Hydra's ConfigStore); [] for a name that is no group."""
    return _option_lister(conf_dir)(group)


def _option_lister(
    conf_dir: Path, searchpath: list[str] | None = None
) -> Callable[[str], list[str]]:
    """``searchpath``: the command line's ``hydra.searchpath=[...]`` overrides, whose folders'
    config files are options too (``objective=tempered`` from the user's own folder)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups: dict[str, list[str]] = {}

        def options(group: str) -> list[str]:
            if group not in groups:
                found = loader.get_group_options(
                    group, config_name="config" if searchpath else None, overrides=searchpath
                )
                groups[group] = sorted(set(found))
            return groups[group]

        # the config repository outlives the context; list every group now, while it is open
        for group in _all_groups(loader):
            options(group)
    return lambda group: groups.get(group, [])


def _all_groups(loader: object, parent: str = "") -> list[str]:
    found = []
    for name in loader.list_groups(parent):  # type: ignore[attr-defined]
        path = f"{parent}/{name}" if parent else name
        found += [path, *_all_groups(loader, path)]
    return found


def _choices(value: object) -> list[object] | None:
    """The options an override's value names: one, a list's, a choice sweep's; None for
    values Hydra expands itself (``range()``, ``interval()``, ``glob()``)."""
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(value, ChoiceSweep):
        return list(value.list)
    if isinstance(value, list):
        return value
    if isinstance(value, str | int | float):
        return [value]
    return None


def check_overrides(
    argv: list[str], conf_dir: Path = CONF_DIR, options: Callable[[str], list[str]] | None = None
) -> str | None:
    """Return a one-line error for the first ``group=option`` naming no option Hydra knows,
    else None. Unparsable overrides are left to `check_override_keys`, which words them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = hydra_overrides(argv)
    if not overrides:
        return None
    searchpath = [o for o in overrides if o.lstrip("+").startswith("hydra.searchpath=")]
    options = options or _option_lister(conf_dir, searchpath)
    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue
        if override.is_delete() or "." in override.key_or_group.split("/")[-1]:
            continue  # a key inside a group (data.batch_size=...) is checked later
        known = options(override.key_or_group)
        for choice in (_choices(override.value()) or []) if known else []:
            if choice is not None and str(choice) != "null" and str(choice) not in known:
                return (
                    f"unknown {override.key_or_group} {str(choice)!r}; choose one of: "
                    f"{', '.join(known)}"
                )
    return None


def check_command_overrides(argv: list[str]) -> None:
    """Every override of a command line, checked before Hydra and torch: a one-line
    `UserError` for a typo, an unknown key or a bad value."""
    from iwae.launch.config_check import check_override_keys  # keys, unparsable, values

    overrides = hydra_overrides(argv)
    if overrides is None:
        return  # shell completion or help: no job runs
    # the fused launcher's options, before Hydra writes the sweep directory (no torch needed)
    from hydra_plugins.iwae_fused_launcher.config import check_launcher_overrides

    # check_override_keys leaves another primary config (-cn, -cp, -cd) to Hydra
    message = (
        check_overrides(argv)
        or check_launcher_overrides(overrides)
        or check_override_keys(argv, CONF_DIR)
    )
    if message:
        raise UserError(message)


def exit_on_bad_overrides(argv: list[str] | None = None) -> None:
    """`check_command_overrides`, reported as ``error: ...`` with exit status 2."""
    try:
        check_command_overrides(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        exit_for(e)


def quiet_third_party_noise() -> None:
    """Drop messages that mislead or distract on every run: Lightning's advert for its cloud
    logger, its hint to use ``srun`` whenever SLURM is installed (runs here are launched by
    Hydra's submitit launcher instead), a deprecation inside Lightning's own code, and the
    lines that read like problems but are this project's design:

    - "Checkpoint directory ... exists and is not empty": every resume (``resume=true``) and
      every requeued job writes into its own run directory's ``checkpoints/`` on purpose.
    - "The number of training batches (10) is smaller than the logging interval": a short run
      logs its metrics at the epoch's end anyway (``on_epoch=True``).
    - "`weights_only` was not set, defaulting to `False`": Lightning says so when a callback
      saves a full checkpoint (the preemption save); full is what resuming needs, and every
      checkpoint is read with ``weights_only=True`` (iwae/training/checkpointing.py).
    (W&B's "The anonymous setting has no effect" is avoided at its cause:
    `iwae.training.loggers.WandbLogger`.)

    Called in the launching process and again in every job (a joblib worker is a fresh
    process that inherits none of these filters)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
    )
    # conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config on
    # purpose (`hydra/launcher=joblib` is the name users know); Hydra then checks it against
    # the plugin's schema, which catches misspelt keys, and warns that such matching is
    # deprecated.
    warnings.filterwarnings(
        "ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema"
    )
    for name, text in (
        ("pytorch_lightning.utilities.rank_zero", "litlogger"),
        ("pytorch_lightning.trainer.connectors.checkpoint_connector", "`weights_only` was not set"),
    ):
        logger = logging.getLogger(name)
        if not any(getattr(f, "iwae_quiet", False) for f in logger.filters):
            logger.addFilter(_DropMessage(text))


class _DropMessage(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    iwae_quiet = True  # added once per logger and process, however often the jobs ask

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def is_eval_command(argv: list[str]) -> bool:
    """Whether the command line sets ``mode=eval`` (its last ``mode=`` wins, as in Hydra)."""
    modes = [w.split("=", 1)[1] for w in argv if w.lstrip("+").startswith("mode=")]
    return bool(modes) and modes[-1].strip("'\"") == "eval"


def run_dir_is_new(argv: list[str]) -> bool:
    """Whether a single run's directory does not exist before this process: only then may a
    refused run remove it. Hydra's default directory is named after the clock (a new one
    each second). A sweep's job directories are Hydra's, made for their job: `run_job`
    decides for them."""
    if "-m" in argv or "--multirun" in argv:
        return False
    given = None
    for word in argv:
        name, sep, value = word.partition("=")
        if sep and name.lstrip("+") == "hydra.run.dir":
            given = value.strip("'\"")
    return given is None or "${" in given or not Path(given).exists()


def remove_refused_run_dir(run_dir: Path, job_name: str) -> bool:
    """Remove ``run_dir`` if it holds nothing but what Hydra and the run lock wrote before the
    run was refused (``.hydra/*.yaml``, ``<job>.log``, ``.iwae.lock``): bad input leaves no
    directory that looks like a run. Anything else in it keeps it. Returns whether it was
    removed."""
    import shutil

    own = {".hydra", f"{job_name}.log", ".iwae.lock"}
    try:
        entries = list(run_dir.iterdir())
        hydra_files = list((run_dir / ".hydra").iterdir()) if (run_dir / ".hydra").is_dir() else []
    except OSError:
        return False
    if any(p.name not in own or p.is_symlink() for p in entries) or any(
        p.suffix != ".yaml" or not p.is_file() or p.is_symlink() for p in hydra_files
    ):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def no_validation_error(hydra_cfg: object, metrics: dict) -> UserError | None:
    """The one line for a trial of an Optuna study that ended before any validation, else None.

    Optuna gets nothing to minimise from such a trial; as every trial trains for the same
    number of steps, none would, and the study would end in Optuna's "No trials are completed
    yet" traceback after training them all. So the first such trial stops the study."""
    sweeper = str(getattr(getattr(hydra_cfg, "sweeper", None), "_target_", ""))
    if "optuna" not in sweeper.lower():
        return None
    steps = metrics.get("train/steps")
    return UserError(
        f"this trial ended after {steps} training steps without a validation, so it has no "
        "val/bound for the Optuna sweeper to minimise (nor would any trial); let each trial "
        "reach the end of an epoch: raise trainer.max_steps or drop it, or validate within an "
        "epoch with trainer.val_check_interval=<steps>"
    )


quiet_third_party_noise()
