"""What the project adds to Lightning's loggers: closing a W&B run with the final metrics."""

from __future__ import annotations

from typing import Any


def finish_wandb(trainer: Any, metrics: dict[str, Any]) -> None:
    """Put the final metrics in the W&B run's summary and close the run.

    Closing matters in a sweep: the basic launcher runs every job in one process, and an open
    W&B run would be taken over by the next job's WandbLogger (all jobs in one W&B run).
    """
    from pytorch_lightning.loggers import WandbLogger

    if not trainer.is_global_zero or not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "seed"}
        )
        wandb.finish()
