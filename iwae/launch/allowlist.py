"""What a checkpoint's stored config may build: this project's own classes and the plug-ins
the person running the command trusts, nothing else.

``torch.load(weights_only=True)`` keeps a checkpoint from running code while it is unpickled,
but the run config stored in it (``iwae_config``) is later passed to ``hydra.utils.instantiate``,
which calls whatever ``_target_`` names: ``builtins.open(victim, "w")`` would truncate a file.
`rebuild_config` checks the stored config before anything is built: every ``_target_`` in a
group that is rebuilt must be one of that group's classes below (the ones ``conf/`` uses;
``tests/test_checkpoint_security.py`` checks that the lists cover ``conf/``), and Hydra's other
special keys (``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``) and interpolations
(a resolver such as ``oc.decode`` could build a new ``_target_``), are refused: a stored
config is resolved before it is saved, so a genuine one has none. Nothing else of the
stored config is kept, nor where its data came from (``data.root``, ``data.download``,
``data.base_url``): a rebuild reads local files only.

A class of the user's own module (a bound, a network, a data module) may be rebuilt when the
command trusts that module (``plugins=[mybound]``, ``$IWAE_PLUGINS``, an installed entry
point: `iwae.launch.plugins`); the caller passes the trusted modules in. A ``plugins`` key
stored in the checkpoint is not among the keys kept, so a file never trusts itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iwae.errors import UserError
from iwae.launch.plugins import is_trusted_target, refusal_hint

_OBJECTIVES = ("IWAE", "VAE", "MIWAE", "CIWAE", "PIWAE", "Renyi", "RWS", "Staged")
_DATA = ("MNISTSubset", "MNIST", "BinarizedMNIST", "Omniglot", "FashionMNIST", "Npz", "Folder")

# The classes a stored config may name, per config group.
ALLOWED_TARGETS: dict[str, frozenset[str]] = {
    "model": frozenset({"iwae.model.IWAEModel", "iwae.conv.ConvModel"}),
    "objective": frozenset(f"iwae.objectives.{name}" for name in _OBJECTIVES),
    "data": frozenset(f"datamodules.{name}DataModule" for name in _DATA),
    "schedule": frozenset({"iwae.schedules.ConstantSchedule", "iwae.schedules.PaperSchedule"}),
    "optimizer": frozenset({"torch.optim.Adam"}),
}
# ``_partial_: true`` is how conf/optimizer hands Adam to the module without its parameters.
_PARTIAL_GROUPS = ("optimizer",)
# Where classes lived before `iwae/` was split into packages: a checkpoint written then names
# them by their old module in its stored config (callbacks and the like, which a resume compares
# with today's config). `current_names` rewrites those names to today's.
_TRAINING = ("module", "callbacks", "nonfinite", "checkpointing", "resume", "optim", "loggers")
_TRAINING_MORE = ("outputs", "finetune")
RENAMED: dict[str, str] = {
    **{f"iwae.{name}.": f"iwae.training.{name}." for name in (*_TRAINING, *_TRAINING_MORE)},
    "iwae.diagnostics.GradientDiagnostics": "iwae.training.diagnostics.GradientDiagnostics",
}
# Where a data module finds or fetches its files: taken from the command line or the machine's
# own data directory (`iwae.launch.assembly.build_data`), never from a stored config, so that a
# checkpoint cannot make a rebuild download from its URL or write into its directory.
LOCAL_DATA_KEYS = ("download", "base_url", "root")
# Plain settings a rebuilt run reads (threads, seed, eval.k): they may hold no `_target_`.
_PLAIN_KEYS = ("k", "seed", "threads", "flush_denormal", "eval")


def check_node(group: str, node: Any, where: str, trusted: Sequence[str] = ()) -> None:
    """Raise a one-line `UserError` if ``node`` (plain dicts, lists and scalars, resolved)
    would make Hydra call anything but ``group``'s allowed classes or a class or function of
    the ``trusted`` plug-in modules."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            place = f"{where}.{key}"
            if key == "_target_":
                allowed = value in ALLOWED_TARGETS.get(group, ())
                if not allowed and not is_trusted_target(value, trusted):
                    raise UserError(
                        f"{place} names {value!r}, which is not one of this project's {group} "
                        f"classes nor in a trusted plug-in module; {refusal_hint(value, trusted)}"
                    )
            elif isinstance(key, str) and key.startswith("_") and key.endswith("_"):
                if not (key == "_partial_" and group in _PARTIAL_GROUPS and where == group):
                    raise UserError(f"{place}: Hydra's {key} is not allowed in a stored config")
            check_node(group, value, place, trusted)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_node(group, value, f"{where}[{i}]", trusted)
    elif isinstance(node, str) and "${" in node:
        raise UserError(f"{where}: interpolation {node!r} is not allowed in a stored config")


def current_names(node: Any) -> Any:
    """``node`` (a stored config: plain dicts, lists, scalars) with every ``_target_`` that
    names a class by its module before the package split renamed to where it is now."""
    if isinstance(node, Mapping):
        return {
            key: _renamed(value) if key == "_target_" else current_names(value)
            for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return [current_names(value) for value in node]
    return node


def _renamed(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    for old, new in RENAMED.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def rebuild_config(
    stored: Mapping[str, Any], source: str, trusted: Sequence[str] = ()
) -> DictConfig:
    """The stored run config, limited to what can be rebuilt safely, or a one-line `UserError`
    naming ``source`` (the checkpoint) and the offending key. ``trusted``: the plug-in modules
    this command trusts (`iwae.launch.plugins.trust`), never any the checkpoint names. Nothing
    is called but the trusted modules' lookups."""
    safe: dict[str, Any] = {}
    stored = current_names(stored)
    for key in (*ALLOWED_TARGETS, *_PLAIN_KEYS):
        if key not in stored:
            continue
        value = stored[key]
        try:
            group = key if key in ALLOWED_TARGETS else ""  # plain settings build nothing
            check_node(group, value, key, trusted if group else ())
            if key in ("model", "data", "objective") and not _has_target(value):
                raise UserError(f"{key} has no _target_")
        except UserError as err:
            raise UserError(f"refused to rebuild {source}: {err}") from None
        if key == "data":
            value = {k: v for k, v in value.items() if k not in LOCAL_DATA_KEYS}
        safe[key] = value
    try:
        return OmegaConf.create(safe)
    except OmegaConfBaseException as err:  # a tensor or other non-config value
        raise UserError(f"refused to rebuild {source}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _has_target(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("_target_"), str)
