"""A fused sweep's members, and which of them can share one training step.

Configurations fuse when they share everything but what each member keeps for itself
(`PER_MEMBER`): the data (apart from its seed), the architecture, the schedule, the optimizer
and the trainer. Anything else that differs splits them into separate groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from iwae.errors import UserError
from iwae.launch.device import GPU_NAMES, check_accelerator

# Top-level keys each member keeps for itself. `callbacks` and `logger` name the member's own
# directory; of the callbacks only the non-finite guard's settings are read, per member.
PER_MEMBER = ("seed", "k", "objective", "eval", "logger", "callbacks", "paths", "resume")


# Trainer settings the fused loop does not implement: only their defaults are accepted, so
# a setting is never silently ignored.
TRAINER_AS_IS: dict[str, tuple[Any, ...]] = {
    "max_steps": (-1, None),
    "check_val_every_n_epoch": (1,),
    "accumulate_grad_batches": (1,),
    "gradient_clip_val": (None, 0, 0.0),
    "limit_train_batches": (None, 1.0, 1),
    "limit_val_batches": (None, 1.0, 1),
    "precision": (None, 32, "32", "32-true"),
    "strategy": ("auto", None, "single_device"),
}


@dataclass
class Member:
    """One configuration of the sweep: its Hydra job number, resolved config and run directory."""

    job: int
    cfg: DictConfig
    output_dir: Path
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``job 3 (objective=iwae k=50)``: how lines about one member name it."""
        return f"job {self.job} ({' '.join(self.overrides) or 'no overrides'})"


def shared_config(cfg: DictConfig, split_by_k: bool) -> dict[str, Any]:
    """What the members of one group must share: the config without `PER_MEMBER` keys."""
    shared = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(shared, dict)
    for key in PER_MEMBER:
        shared.pop(key, None)
    shared.get("data", {}).pop("seed", None)
    if split_by_k:
        shared["k"] = cfg.k
    return shared


def differing_keys(configs: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """Dotted keys whose values are not the same in all ``configs``."""
    keys = sorted({k for c in configs for k in c})
    out = []
    for key in keys:
        values = [c.get(key) for c in configs]
        if all(isinstance(v, dict) for v in values):
            out += differing_keys(values, f"{prefix}{key}.")
        elif any(
            json.dumps(v, sort_keys=True) != json.dumps(values[0], sort_keys=True) for v in values
        ):
            out.append(f"{prefix}{key}")
    return out


def group_members(
    members: list[Member], split_by_k: bool, single_group: bool
) -> tuple[list[list[Member]], str | None]:
    """Members in groups that can train together, in job order, and a one-line note when there
    are several groups (None for one). ``single_group``: a one-line `UserError` instead."""
    by_key: dict[str, list[Member]] = {}
    shared: dict[str, dict[str, Any]] = {}
    for member in members:
        config = shared_config(member.cfg, split_by_k)
        key = json.dumps(config, sort_keys=True)
        by_key.setdefault(key, []).append(member)
        shared[key] = config
    groups = list(by_key.values())
    if len(groups) == 1:
        return groups, None
    # top-level names ("data, k, model"): what the user chose on the command line
    differ = ", ".join(
        dict.fromkeys(k.split(".")[0] for k in differing_keys(list(shared.values())))
    )
    if single_group:
        hint = "; hydra.launcher.split_by_k=false fuses several k" if differ == "k" else ""
        raise UserError(
            f"hydra.launcher.single_group=true, but the {len(members)} configurations differ in "
            f"{differ}, so they cannot train as one group{hint}; drop single_group to split them"
        )
    sizes = "+".join(str(len(g)) for g in groups)
    note = f"fused: {len(members)} configurations in {len(groups)} groups ({sizes})"
    return groups, f"{note}: they differ in {differ}"


def training_device(accelerator: Any) -> torch.device:
    """The group's device from ``trainer.accelerator``; one line if it asks for a missing GPU."""
    name = str(accelerator)
    check_accelerator(name)
    if name in GPU_NAMES:
        return torch.device("cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(
        f"hydra/launcher=fused runs on trainer.accelerator=cpu, gpu or auto; got {name}"
    )


def check_member(member: Member) -> None:
    """One line for what a fused member cannot do (everything else is checked where built)."""
    cfg = member.cfg
    if cfg.get("mode", "train") != "train":
        raise UserError(
            f"hydra/launcher=fused trains (mode=train); {member.label} has mode={cfg.mode}"
        )
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key):
            raise UserError(
                f"hydra/launcher=fused starts each group afresh or resumes it (resume=true); "
                f"{member.label} sets {key}: use the default launcher"
            )
    if cfg.get("steps_per_batch", 1) != 1:
        raise UserError(
            f"hydra/launcher=fused has its own loop, without Lightning's per-batch work; "
            f"{member.label} sets steps_per_batch={cfg.steps_per_batch}: drop it"
        )
    trainer = cfg.trainer
    if trainer.get("devices", 1) not in (1, "auto") or trainer.get("num_nodes", 1) != 1:
        raise UserError(
            f"hydra/launcher=fused trains a group on one device; {member.label} asks for "
            f"trainer.devices={trainer.get('devices')}: use trainer=default"
        )
    for key, allowed in TRAINER_AS_IS.items():
        if trainer.get(key, allowed[0]) not in allowed:
            raise UserError(
                f"hydra/launcher=fused has no trainer.{key} (it validates every epoch and "
                f"trains every step at 32 bits); {member.label} sets {trainer.get(key)}: use "
                "the default launcher"
            )
