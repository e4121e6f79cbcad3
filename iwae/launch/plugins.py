"""Plug-ins: a researcher's own bound, network or data module, trusted by the person who runs
the command and never by a file.

A ``_target_`` of a run config (``objective._target_=mybound.TemperedIWAE``) and a checkpoint's
stored config may name this project's classes (`iwae.launch.allowlist`) or a class or function
of a trusted module. Three sources of trust, all of them the user's own act:

- ``plugins=[mybound]`` on the command line (a top-level key of the run config);
- the environment variable ``IWAE_PLUGINS=mybound,other`` (comma-separated), read by every
  entry point: ``train.py``, the report tools, the Python API; it travels to joblib and SLURM
  workers with the rest of the environment;
- an installed package that declares itself in the entry-point group ``iwae.plugins`` (the way
  pytest and Hydra find plugins): installing it is the act of trust. The entry point's value
  names the module: ``[project.entry-points."iwae.plugins"] mybound = "mybound"``.

A ``plugins`` key stored in a checkpoint is never read: a file cannot trust itself.

Trusting a module trusts the classes and functions defined in it and its submodules, nothing
else: ``mybound.TemperedIWAE`` and ``mybound.sub.ConvNet``, but not ``mybound_evil.X`` (a
neighbour), ``mybound.os.system`` (an attribute imported into the module), nor any name with a
part starting with ``_`` (``mybound.__builtins__.open``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from iwae.errors import UserError

ENV_VAR = "IWAE_PLUGINS"
ENTRY_POINT_GROUP = "iwae.plugins"
# Where this project's own classes live: a `_target_` there is checked against the allow-list,
# never trusted as a plug-in (the allow-list names the classes a rebuild may build).
PROJECT_MODULES = ("iwae", "datamodules", "hydra_plugins")
# The config groups whose `_target_` a run builds from a user's module: a model, a bound, a
# data module, a schedule or an optimizer (callbacks and loggers are the trainer's business).
REBUILT_GROUPS = ("model", "objective", "data", "schedule", "optimizer")
HOW_TO_TRUST = "add plugins=[{m}] or set IWAE_PLUGINS={m} if you trust that module"


def _names(value: Any, source: str) -> list[str]:
    """Module names from ``plugins`` (a list, or one comma-separated string) or the env var."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, Sequence) or type(value).__name__ == "ListConfig":
        items = value
    else:
        raise UserError(f"{source} must be a list of module names like [mybound], got {value!r}")
    names = []
    for item in items:
        name = str(item).strip() if isinstance(item, str) else item
        if name == "":
            continue
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise UserError(
                f"{source} names {name!r}, which is not a module name; write the module you "
                "import, like plugins=[mybound] or IWAE_PLUGINS=mybound,mylab.models"
            )
        names.append(name)
    return names


def entry_point_modules() -> list[str]:
    """The modules installed packages declare in the entry-point group ``iwae.plugins``."""
    return [ep.module for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]


def trusted_modules(cfg_plugins: Any = None) -> tuple[str, ...]:
    """The modules this command trusts: ``cfg_plugins`` (the command line's ``plugins``), then
    ``$IWAE_PLUGINS``, then installed entry points; each once, in that order."""
    found = [
        *_names(cfg_plugins, "plugins"),
        *_names(os.environ.get(ENV_VAR), ENV_VAR),
        *entry_point_modules(),
    ]
    return tuple(dict.fromkeys(found))


def import_plugins(modules: Sequence[str]) -> tuple[str, ...]:
    """Import every trusted module now (before anything is built from a config), so that a
    missing one is one line naming it rather than a Hydra traceback later. Returns them."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module is one line
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"plug-in module {name!r} cannot be imported ({type(err).__name__}: {reason}); "
                f"put its folder on PYTHONPATH (PYTHONPATH=<folder> python train.py ...) or "
                f"pip install it, or drop it from plugins / {ENV_VAR}"
            ) from None
    return tuple(modules)


def trust(cfg_plugins: Any = None) -> tuple[str, ...]:
    """`trusted_modules` imported: what every entry point calls before it builds anything."""
    return import_plugins(trusted_modules(cfg_plugins))


def _within(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def is_trusted_target(target: Any, modules: Sequence[str]) -> bool:
    """Does ``target`` name a class or function defined in one of ``modules`` (or their
    submodules)? The name is resolved as Hydra resolves it, and the object itself must have
    been defined there: ``mybound.os.system`` resolves to ``os.system``, which was not."""
    if not isinstance(target, str) or not modules:
        return False
    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        return False
    owner = next((m for m in modules if target.startswith(m + ".")), None)
    if owner is None or _within(owner, PROJECT_MODULES[0]) or owner in PROJECT_MODULES:
        return False
    obj = _resolve(target)
    if obj is None:
        return False
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    return _within(str(getattr(obj, "__module__", "")), owner)


def _resolve(target: str) -> Any:
    """The object ``target`` names, looked up as ``hydra.utils.instantiate`` looks it up (its
    public ``get_object``); None if there is none. Hydra logs a failed lookup as an error: a
    refused target is said once, in the refusal, so that log line is held back here."""
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        return get_object(target)
    except Exception:  # noqa: BLE001 - not there: not trusted (the refusal names it)
        return None
    finally:
        hydra_log.setLevel(level)


def refusal_hint(target: Any, modules: Sequence[str]) -> str:
    """How to trust ``target``'s module, or why trusting it would not help."""
    if not isinstance(target, str) or "." not in target:
        return "a _target_ names a class as module.Class"
    top = target.split(".", 1)[0]
    if any(p.startswith("_") for p in target.split(".")):
        return "no name with a part starting with _ can be built"
    if top in PROJECT_MODULES or top in sys.stdlib_module_names or top in _LIBRARIES:
        return "only this project's classes and plug-ins you trust can be built"
    owner = next((m for m in modules if target.startswith(m + ".")), None)
    if owner is not None:
        return f"it is not a class or function defined in the trusted module {owner}"
    return HOW_TO_TRUST.format(m=target.rsplit(".", 1)[0])


# Libraries a config could reach that are never a plug-in of this project.
_LIBRARIES = frozenset(
    {"torch", "numpy", "hydra", "omegaconf", "pytorch_lightning", "lightning_fabric", "scipy"}
)


def _targets(node: Any, where: str) -> Iterable[tuple[str, Any]]:
    """(place, value) of every ``_target_`` below ``node`` (plain dicts and lists)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                yield f"{where}._target_", value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def check_run_targets(config: Any, modules: Sequence[str]) -> None:
    """One line for a model, objective, data, schedule or optimizer ``_target_`` of a run
    config that is outside this project and not in a trusted module."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig):  # only the groups: the rest may need Hydra's runtime
        nodes = {g: config.get(g) for g in REBUILT_GROUPS}
        config = {
            g: OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v
            for g, v in nodes.items()
        }
    for group in REBUILT_GROUPS:
        for place, target in _targets(config.get(group), group):
            top = str(target).split(".", 1)[0]
            if top in PROJECT_MODULES or top in _LIBRARIES or is_trusted_target(target, modules):
                continue
            raise UserError(
                f"{place}={target!r} is not one of this project's classes nor in a trusted "
                f"plug-in module; {refusal_hint(target, modules)}"
            )


def trust_run(cfg: Any) -> tuple[str, ...]:
    """For ``train.py``'s job: import the trusted plug-ins (``plugins``, ``$IWAE_PLUGINS``,
    entry points) and, when training, refuse a ``_target_`` from an untrusted module. The
    same rule holds for the run as for a rebuild of its checkpoint, so what trains can later
    be evaluated and reported with the same trust. Returns the trusted modules."""
    modules = trust(cfg.get("plugins"))
    if cfg.get("mode", "train") == "train":
        check_run_targets(cfg, modules)
    return modules


# --- the fused launcher -------------------------------------------------------------------------
FUSED_MODEL = "iwae.model.IWAEModel"
FUSED_OBJECTIVES = tuple(f"iwae.objectives.{name}" for name in ("VAE", "IWAE", "CIWAE"))


def check_fused_member(cfg: Any, label: str = "this member") -> None:
    """One line, before any group of a fused sweep trains, for a member the fused step cannot
    train: a plug-in model or bound (the fused step computes this project's MLP and its VAE,
    IWAE and CIWAE bounds itself, so a subclass's own formula would be silently ignored), or
    a ``_target_`` from an untrusted module."""
    check_run_targets(cfg, trust(cfg.get("plugins")))
    model = str((cfg.get("model") or {}).get("_target_"))
    objective = str((cfg.get("objective") or {}).get("_target_"))
    for what, target, allowed in (
        ("model", model, (FUSED_MODEL,)),
        ("objective", objective, FUSED_OBJECTIVES),
    ):
        if target not in allowed:
            raise UserError(
                f"hydra/launcher=fused trains this project's one_layer/two_layer model with "
                f"objective=vae, iwae or ciwae; {label} has {what} {target}: train it with the "
                "default launcher (drop hydra/launcher=fused, or use hydra/launcher=joblib)"
            )
