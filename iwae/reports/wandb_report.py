"""The report's own W&B run: table and figures, in the runs' group, when the runs used W&B."""

from __future__ import annotations

from pathlib import Path

from iwae.launch.resolvers import sweep_name
from iwae.reports.runs import CSV_FIELDS, Run


def wandb_group(runs: list[Run], root: Path) -> str:
    """The runs' W&B group, so that the report sits beside them: the group their resolved
    config names, else the sweep's name from its directory, as `iwae.launch.resolvers.sweep_group`
    derives it when the config was saved unresolved (Hydra's own ``.hydra/config.yaml``)."""
    for run in runs:
        group = ((run.config.get("logger") or {}).get("wandb") or {}).get("group")
        if isinstance(group, str) and group and "${" not in group:
            return group
    return sweep_name(root)


def log_to_wandb(runs: list[Run], root: Path, rows: list[dict], paths: dict[str, Path]) -> bool:
    """Log the table and figures to a W&B run of their own, in the runs' group, when the runs
    used W&B."""
    loggers = [r.config.get("logger") or {} for r in runs]
    cfg = next((lg["wandb"] for lg in loggers if lg.get("wandb")), None)
    if cfg is None:
        return False
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(
        project=cfg.get("project", "iwae"),
        save_dir=str(root),
        offline=bool(cfg.get("offline", False)),
        name=f"report-{root.name}",
        group=wandb_group(runs, root),
        job_type="report",
    )
    for name, path in paths.items():
        logger.log_image(key=f"report/{name}", images=[str(path)])
    columns = [*CSV_FIELDS, *sorted({c for r in rows for c in r} - set(CSV_FIELDS))]
    logger.log_table(
        key="report/table1", columns=columns, data=[[r.get(c) for c in columns] for r in rows]
    )
    logger.experiment.finish()
    return True
