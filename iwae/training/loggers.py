"""What the project adds to Lightning's loggers: the run's config at the top of every logger
(W&B's run config, the CSV logger's ``hparams.yaml``, TensorBoard's HParams view), the run's
media in W&B, closing a W&B run with the final metrics, MLflow behind its extra, and one
history across a resume.

A resumed run (``resume=true``) continues the logs of the process it resumes. Everything that
process logged after its last checkpoint is logged again by the resumed run, at the same steps
(bit for bit on the CPU), and the resumed run logs nothing at a step before the checkpoint's.
So the first step a process logs says where the earlier history ends: the CSV file keeps its
rows before that step, TensorBoard hides the earlier events from that step on (its purge
marker, as ``SummaryWriter(purge_step=...)`` writes it), and the append-only stores (W&B,
MLflow) skip the steps they already hold.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import loggers as pl_loggers
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only

from iwae.errors import UserError
from iwae.training.checkpointing import write_bytes_atomic

# The names a researcher filters, groups and plots runs by, in this order at the top of the
# W&B config; each is a Hydra choice (``model: two_layer``) or a value of the resolved config.
_CHOICES = ("experiment", "objective", "model", "data", "schedule", "optimizer")


class _ContinuedCSV(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows of the process a run resumes (Lightning's
    deletes ``metrics.csv`` when its folder is not empty) and writes every row as it is logged,
    so that a kill loses none logged before the checkpoint it resumes from."""

    def __init__(self, log_dir: str) -> None:
        self._cut_pending = True
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # the earlier rows are cut at the first logged step instead (`_keep_rows_before`)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._cut_pending:
            self._cut_pending = False
            self._keep_rows_before(step)
        super().log_metrics(metrics_dict, step)
        self.save()

    def _keep_rows_before(self, step: int | None) -> None:
        """Keep the file's complete rows logged before ``step`` (all of them when it is None)."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        text = path.read_bytes().decode("utf-8", errors="replace")
        text = text[: text.rfind("\n") + 1]  # a kill mid-write leaves a part of a last row
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        kept = [row for row in rows if step is None or _row_step(row) < step]
        if not kept:
            path.unlink()
            return
        self.metrics_keys = sorted({key for row in kept for key in row})
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(kept)
        data = buffer.getvalue().encode("utf-8")
        write_bytes_atomic(path, lambda f: f.write(data))


def _row_step(row: Mapping[str, str]) -> float:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return float("inf")  # not a row this writer wrote: dropped with the cut rows


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSVLogger whose ``metrics.csv`` holds a resumed run's whole history once:
    the rows the resumed process logged before its first step, then the resumed run's."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSV(log_dir=self.log_dir)
        return self._experiment


class _LoggedSteps:
    """The last step an append-only store (W&B, MLflow) holds and the metric names logged at
    it, to skip what a resumed run logs again: the earlier process logged those values."""

    def __init__(self, step: int | None = None, keys: Iterable[str] = ()) -> None:
        self.step, self.keys = step, set(keys)

    def seen(self, step: int | None, metrics: Mapping[str, Any]) -> bool:
        if step is None or self.step is None:
            return False
        return step < self.step or (step == self.step and set(metrics) <= self.keys)

    def add(self, step: int | None, metrics: Mapping[str, Any]) -> None:
        if step is None:
            return
        if self.step is None or step > self.step:
            self.step, self.keys = step, set()
        if step == self.step:
            self.keys |= set(metrics)


class WandbLogger(pl_loggers.WandbLogger):
    """Lightning's W&B logger without the ``anonymous=None`` it always hands ``wandb.init``,
    which makes W&B print "The anonymous setting has no effect" on every run, and which logs
    no step twice across a resume: a run with an ``id`` (``resume: allow``) continues in W&B,
    and the steps an earlier process logged to that id (``wandb/logged_steps-<id>.json``) are
    not logged again. Everything else is Lightning's (``tests/test_private_api.py`` checks
    the ``_wandb_init`` it keeps)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        run_id = self._wandb_init.get("id")  # without one, each process is a run of its own
        self._steps_file = None
        self._logged = _LoggedSteps()
        if run_id and self._save_dir:
            self._steps_file = Path(self._save_dir) / "wandb" / f"logged_steps-{run_id}.json"
            try:
                stored = json.loads(self._steps_file.read_text())
                self._logged = _LoggedSteps(int(stored["step"]), stored["keys"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # none yet (a first start), or unreadable: log everything

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._logged.seen(step, metrics):
            return
        super().log_metrics(metrics, step)
        if self._steps_file is None:
            return
        self._logged.add(step, metrics)
        record = json.dumps({"step": self._logged.step, "keys": sorted(self._logged.keys)})
        write_bytes_atomic(self._steps_file, lambda f: f.write(record.encode()))


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


# The HParams view's first columns: the choices runs are compared by (TensorBoard shows them
# in the order of their names).
HPARAMS_LEAD = ("objective", "estimator", "k", "model", "data", "binarization", "seed", "lr")


def hparams_columns(params: Mapping[str, Any]) -> dict[str, Any]:
    """The HParams view's columns: `HPARAMS_LEAD`, then the rest of the flat config
    without what no one compares runs by (``_target_`` and other ``_``-keys, the callbacks'
    settings); those stay in ``hparams.yaml``."""
    columns = {
        name: value
        for name, value in flat_hparams(params).items()
        if not name.split("/")[-1].startswith("_") and not name.startswith("config/callbacks/")
    }
    lead = {name: columns.pop(name) for name in HPARAMS_LEAD if name in columns}
    return {**lead, **columns}


class TensorBoardLogger(pl_loggers.TensorBoardLogger):
    """Lightning's TensorBoardLogger whose hyperparameters reach the HParams view with the
    project's metrics as its columns.

    Lightning writes the HParams summary only together with metric values (its default logs
    a placeholder ``hp_metric`` of -1 at step 0); this writes it with the names in
    `HPARAMS_METRICS` and no values, so the view shows each run's last ``val/bound``, and with
    the columns of `hparams_columns` (the choices that matter first).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, **kwargs)
        # Event files of an earlier process in this folder (a resumed run): what it logged from
        # this process's first step on is hidden when that step is logged (`log_metrics`).
        self._purge_pending = any(Path(self.log_dir).glob("events.out.tfevents.*"))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._purge_pending and step is not None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            # TensorBoard drops earlier events at or after a START's step: SummaryWriter's
            # purge_step, which needs the step before the writer exists (the hparams come first).
            start = SessionLog(status=SessionLog.START)
            self.experiment._get_file_writer().add_event(Event(step=step, session_log=start))
        self._purge_pending = False
        super().log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None) -> None:
        super().log_hyperparams(params, metrics)  # hparams.yaml; with metrics, the summary too
        if metrics is not None:
            return
        from torch.utils.tensorboard.summary import hparams

        summaries = hparams(hparams_columns(dict(params)), dict.fromkeys(HPARAMS_METRICS, 0.0))
        lead_the_view(summaries[0])
        writer = self.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        for summary in summaries:
            writer.add_summary(summary)


def lead_the_view(experiment: Any) -> None:
    """Mark `HPARAMS_LEAD` in the experiment summary as the settings runs differ by.

    TensorBoard orders the HParams columns by that mark, then by name (``differs`` first), so
    without it the view opens at ``batch_size`` and ``config/...``.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    value = experiment.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAMS_LEAD
    value.metadata.plugin_data.content = data.SerializeToString()


def mlflow_logger(**kwargs: Any) -> Any:
    """Lightning's MLFlowLogger, or a one-line `UserError` naming the extra when MLflow is not
    installed (Lightning's own error is a traceback)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError(
            "logger=mlflow needs MLflow: pip install '.[mlflow]' (or: pip install mlflow)"
        )
    return MLFlowLogger(**kwargs)


class MLFlowLogger(pl_loggers.MLFlowLogger):
    """Lightning's MLFlowLogger that continues the MLflow run of the process a run resumes
    (the run directory's store holds this run only) and skips the steps it holds."""

    def __init__(self, **kwargs: Any) -> None:
        self._logged = _LoggedSteps()
        if kwargs.get("run_id") is None:
            kwargs["run_id"] = self._earlier_run(
                kwargs.get("tracking_uri"), kwargs.get("experiment_name", "lightning_logs")
            )
        super().__init__(**kwargs)

    def _earlier_run(self, tracking_uri: str | None, experiment_name: str) -> str | None:
        """The store's latest run of ``experiment_name``, its logged steps noted; None if none."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
        if not runs:
            return None
        run_id = runs[0].info.run_id
        for key in runs[0].data.metrics:
            for point in client.get_metric_history(run_id, key):
                self._logged.add(point.step, {key})
        return run_id

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._logged.seen(step, metrics):
            super().log_metrics(metrics, step)


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
