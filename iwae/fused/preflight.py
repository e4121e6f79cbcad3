"""What a fused sweep checks before its first group trains.

Groups train one after another. A value checked only when its group's turn came (``k=5,0``)
let the earlier groups train and write their results before the sweep stopped; a resume that
changed a member's k, learning rate or seed, or its data file's bytes, continued the old group
checkpoint with the new values, and each member's ``metrics.json`` then recorded values it was
not trained with. Every member is checked here, as a separate ``train.py`` run checks itself
(`iwae.launch.config_check.check_run_values`, `iwae.training.resume`), before anything trains.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from iwae.errors import UserError
from iwae.fused.group import NonFiniteSettings, check_group_jobs
from iwae.fused.members import Member, check_member, training_device
from iwae.launch.allowlist import current_names
from iwae.launch.config_check import check_run_values
from iwae.launch.plugins import check_fused_member
from iwae.training.checkpointing import load_checkpoint
from iwae.training.resume import (
    MAY_CHANGE_HINT,
    check_resume_data,
    refused_changes,
    shown_changes,
)

log = logging.getLogger(__name__)

NEW_SWEEP = "start a new sweep in a new hydra.sweep.dir"


def check_members(members: list[Member]) -> dict[int, str | None]:
    """Every member's values, memory and data (one line naming the member), or a `UserError`;
    returns each job's data SHA-256 (None but for ``data=npz``/``folder``).

    The prepared datamodules are dropped: keeping every member's data until its group trains
    would hold the whole sweep's data at once.
    """
    hashes: dict[int, str | None] = {}
    for member in members:
        check_not_compiled(member)
        check_fused_member(member.cfg, member.label)  # a plug-in or untrusted _target_
        check_member(member)
        try:
            training_device(member.cfg.trainer.get("accelerator", "auto"))
            NonFiniteSettings(member.cfg)
            datamodule = check_run_values(member.cfg).datamodule
        except UserError as err:
            raise UserError(f"{member.label}: {err}") from None
        hashes[member.job] = getattr(datamodule, "data_sha256", None)
    return hashes


def check_not_compiled(member: Member) -> None:
    """``compile=true`` compiles a single run's Lightning training step; a fused group trains
    with its own stacked step (`iwae.fused.group`), which nothing compiles. Refused, so that
    a member never reads as compiled when it was not."""
    if member.cfg.get("compile", False) is not False:
        raise UserError(
            f"hydra/launcher=fused does not compile its stacked training step; "
            f"{member.label} sets compile=true: drop it, or use the default launcher for "
            "compiled runs"
        )


def check_resume(group: list[Member], checkpoint_path: Path, hashes: dict[int, str | None]) -> None:
    """Refuse, in one line, to resume ``checkpoint_path`` with a member whose config (the
    single-run rules: `iwae.training.resume.refused_changes`) or data bytes differ from what
    the group was trained with. Nothing to check if the group has no checkpoint yet."""
    if not checkpoint_path.is_file():
        return
    state = load_checkpoint(checkpoint_path)
    check_group_jobs(state, checkpoint_path, [m.job for m in group])
    configs: list[Any] | None = state.get("configs")
    if configs is None:  # written before member configs were stored: nothing to compare
        log.warning(
            "%s holds no run configs; cannot check that the resume matches", checkpoint_path
        )
    for member, stored in zip(group, configs or [None] * len(group)):
        if stored is None:
            continue
        changes = refused_changes(
            current_names(stored), OmegaConf.to_container(member.cfg, resolve=True)
        )
        if changes:
            raise UserError(
                f"resuming {checkpoint_path} would change {member.label}: "
                f"{shown_changes(changes)}; resume with the values the sweep was trained with, "
                f"or {NEW_SWEEP} {MAY_CHANGE_HINT}"
            )
    for member, data_file in zip(group, state.get("data_files") or [None] * len(group)):
        try:
            check_resume_data(data_file, hashes.get(member.job), checkpoint_path, NEW_SWEEP)
        except UserError as err:
            raise UserError(f"{member.label}: {err}") from None
