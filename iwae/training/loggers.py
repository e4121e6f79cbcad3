"""What the project adds to Lightning's loggers: the run's config at the top of every logger
(W&B's run config, the CSV logger's ``hparams.yaml``, TensorBoard's HParams view), the run's
media in W&B, closing a W&B run with the final metrics, and MLflow behind its extra."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import loggers as pl_loggers
from pytorch_lightning.utilities import rank_zero_only

from iwae.errors import UserError

# The names a researcher filters, groups and plots runs by, in this order at the top of the
# W&B config; each is a Hydra choice (``model: two_layer``) or a value of the resolved config.
_CHOICES = ("experiment", "objective", "model", "data", "schedule", "optimizer")


class WandbLogger(pl_loggers.WandbLogger):
    """Lightning's W&B logger without the ``anonymous=None`` it always hands ``wandb.init``,
    which makes W&B print "The anonymous setting has no effect" on every run. Everything else
    is Lightning's (``tests/test_private_api.py`` checks the ``_wandb_init`` it keeps)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def run_config(cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, str]) -> dict:
    """The config a run's loggers record: the settings users compare runs by at the top
    (objective, k, model, data, binarization, seed, lr, batch size, estimator), then the
    whole resolved config under ``config``, as a plain nested dict (W&B shows it as
    ``config.optimizer.lr``)."""
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    resolved = dict(resolved)
    node = lambda name: resolved.get(name) or {}  # noqa: E731 (a lookup, not a function)
    top: dict[str, Any] = {name: choices.get(name) for name in _CHOICES}
    top.update(
        k=resolved.get("k"),
        estimator=node("objective").get("estimator"),
        binarization=node("data").get("binarization"),
        batch_size=node("data").get("batch_size"),
        lr=node("optimizer").get("lr"),
        seed=resolved.get("seed"),
    )
    return {**{k: v for k, v in top.items() if v is not None}, "config": resolved}


# The metrics TensorBoard's HParams view shows beside each run's settings (the last value of
# each scalar with that tag).
HPARAMS_METRICS = ("val/bound", "train/bound")


def flat_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` flattened to ``{"config/optimizer/lr": 0.001, ...}``, every value a number, a
    bool or a string (what TensorBoard's HParams view can show and filter: lists and None as
    their text)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class TensorBoardLogger(pl_loggers.TensorBoardLogger):
    """Lightning's TensorBoardLogger whose hyperparameters reach the HParams view with the
    project's metrics as its columns.

    Lightning writes the HParams summary only together with metric values (its default logs
    a placeholder ``hp_metric`` of -1 at step 0); this writes it with the names in
    `HPARAMS_METRICS` and no values, so the view shows each run's last ``val/bound``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None) -> None:
        super().log_hyperparams(params, metrics)  # hparams.yaml; with metrics, the summary too
        if metrics is not None:
            return
        from torch.utils.tensorboard.summary import hparams

        summaries = hparams(flat_hparams(dict(params)), dict.fromkeys(HPARAMS_METRICS, 0.0))
        writer = self.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        for summary in summaries:
            writer.add_summary(summary)


def mlflow_logger(**kwargs: Any) -> Any:
    """Lightning's MLFlowLogger, or a one-line `UserError` naming the extra when MLflow is not
    installed (Lightning's own error is a traceback)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError(
            "logger=mlflow needs MLflow: pip install '.[mlflow]' (or: pip install mlflow)"
        )
    return pl_loggers.MLFlowLogger(**kwargs)


def log_run_media(loggers: Iterable[Any], run_dir: Path, metrics: Mapping[str, Any]) -> None:
    """Put the run's sample grid and, where measured (``eval.bound_ks``), its bound-vs-k curve
    into each W&B run, beside its metrics."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        samples = run_dir / "samples.png"
        if samples.is_file():
            logger.log_image("samples", [str(samples)], caption=["model samples (means)"])
        curve = metrics.get("test/bound_vs_k")
        if curve:
            import wandb

            table = wandb.Table(
                columns=["k", "bound", "mc_stderr"],
                data=[[row["k"], row["bound"], row["mc_stderr"]] for row in curve],
            )
            plot = wandb.plot.line(table, "k", "bound", title="test L_k against k (nats)")
            logger.experiment.log({"test/bound_vs_k": plot})


def finish_wandb(loggers: Iterable[Any], metrics: Mapping[str, Any]) -> None:
    """Put the final metrics in the W&B run's summary and close the run.

    Closing matters in a sweep: the basic launcher runs every job in one process, and an open
    W&B run would be taken over by the next job's WandbLogger (all jobs in one W&B run).
    """
    from pytorch_lightning.loggers import WandbLogger

    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "seed"}
        )
        wandb.finish()
