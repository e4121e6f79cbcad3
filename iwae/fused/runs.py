"""Each fused member's run directory, as a separate ``python train.py`` run leaves it.

``metrics.json`` (the keys of `iwae.launch.run.train`), ``checkpoints/last.ckpt``
(``state_dict`` with
``model.``-prefixed keys and the resolved config in ``iwae_config``, so ``mode=eval`` and
`iwae.reports.table1` read it unchanged), ``samples.png``, and its loggers (CSV, W&B) with the
training history. ``.hydra/`` is written by the launcher before training, as Hydra does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from iwae.evaluation import test_metrics
from iwae.fused.group import FusedGroup
from iwae.fused.members import Member
from iwae.launch.assembly import build
from iwae.training.checkpointing import write_bytes_atomic
from iwae.training.loggers import finish_wandb, log_run_media, run_config
from iwae.training.outputs import (
    code_commit,
    format_results,
    optional_artefact,
    save_sample_grid,
    write_json_atomic,
)


def train_group(
    members: list[Member],
    checkpoint_path: Path,
    checkpoint_every_n_steps: int | None = None,
    resume: bool = False,
) -> list[dict[str, Any] | None]:
    """Train one group and write every member's run; None for a member stopped by a NaN."""
    group = FusedGroup(members, checkpoint_path, checkpoint_every_n_steps)
    resumed = resume and group.resume()
    start = f"resumed at step {group.global_step}" if resumed else "from scratch"
    names = "; ".join(m.label for m in members)
    print(f"fused group of {len(members)} ({start}, {group.device}): {names}", flush=True)
    group.fit()
    alive = group.alive.tolist()
    return [write_member_run(group, m) if alive[m] else None for m in range(len(members))]


def run_summary(group: FusedGroup, m: int) -> dict[str, Any]:
    """The keys `iwae.launch.run.train` writes before the test measures (the same names and meaning;
    ``train/seconds`` is the whole group's training time)."""
    member, dm, objective = group.members[m], group.datamodules[m], group.objectives[m]
    metrics: dict[str, Any] = {
        "objective": objective.name,
        "k": objective.k,
        "model": member.choices.get("model", "custom"),
        "data": dm.name,
        "binarization": dm.binarization,
        "seed": member.cfg.seed,
        "code/commit": code_commit(),
        "train/steps": group.global_step,
        "train/epochs": group.epoch,
        "train/seconds": round(group.seconds, 2),
        "train/fused_members": len(group.members),
    }
    skipped = int(group.skipped[m])
    if skipped:
        metrics["train/nonfinite_skipped"] = skipped
    val = [row["val/bound"] for row in group.history[m] if "val/bound" in row]
    if val:
        metrics["val/bound"] = val[-1]
    return metrics


def write_member_run(group: FusedGroup, m: int) -> dict[str, Any]:
    """Evaluate member m and write its run directory; return its metrics."""
    member, dm = group.members[m], group.datamodules[m]
    model = group.stacked.member_model(m)
    metrics = run_summary(group, m)
    write_member_checkpoint(group, m, member.output_dir / "checkpoints" / "last.ckpt")
    if member.cfg.eval.enabled:
        metrics.update(test_metrics(model, dm.test_dataloader(), member.cfg.eval))
    write_json_atomic(member.output_dir / "metrics.json", metrics)  # results before media
    if member.cfg.eval.enabled:
        save_sample_grid(model, dm.image_shape, member.output_dir / "samples.png")
    replay_loggers(member, group.history[m], metrics)
    print(format_results(metrics, member.output_dir, metrics.get("train/seconds")), flush=True)
    return metrics


def write_member_checkpoint(group: FusedGroup, m: int, path: Path) -> None:
    """A checkpoint `iwae.launch.assembly.load_run` and `iwae.reports.table1` read like a separate
    run's: the weights under ``model.``, the resolved config, the step and epoch."""
    state = {f"model.{k}": v for k, v in group.stacked.member_state_dict(m).items()}
    checkpoint = {
        "state_dict": state,
        "iwae_config": OmegaConf.to_container(group.members[m].cfg, resolve=True),
        "global_step": group.global_step,
        "epoch": group.epoch,
        "pytorch-lightning_version": pl.__version__,
        "fused_group_checkpoint": str(group.checkpoint_path),
    }
    write_bytes_atomic(path, lambda f: torch.save(checkpoint, f))


def replay_loggers(
    member: Member, history: list[dict[str, float]], metrics: dict[str, Any]
) -> None:
    """The member's configured loggers (``logger=csv``, ``wandb``) receive its training history
    after the group has finished, one member at a time: one process cannot hold several live
    W&B runs, and the history lives in the group checkpoint, so a resumed group loses none."""
    for node in (member.cfg.get("logger") or {}).values():
        if not node:
            continue
        logger = build(node)
        logger.log_hyperparams(run_config(member.cfg, member.choices))
        for row in history:
            values = {k: v for k, v in row.items() if k != "step"}
            logger.log_metrics(values, step=int(row["step"]))
        loggers = [logger]  # bound now: the lambdas run before the loop moves on
        optional_artefact("W&B media", lambda: log_run_media(loggers, member.output_dir, metrics))  # noqa: B023
        logger.finalize("success")
        optional_artefact("W&B summary", lambda: finish_wandb(loggers, metrics))  # noqa: B023
