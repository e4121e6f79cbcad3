"""logger=tensorboard (alone and beside csv) and logger=mlflow without MLflow installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from iwae.errors import UserError
from iwae.training import loggers
from tests.helpers import TINY, no_wandb_env, run_train


def hparams_plugin_data(run_dir: Path) -> dict:
    """What TensorBoard's HParams view reads from the run's event files: the experiment's
    metric names and the session's hyperparameters."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no event file in {run_dir / 'tensorboard'}"
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    metrics, session, scalars, columns = [], {}, set(), []
    for file in files:
        events = EventAccumulator(str(file))
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        for content in events.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            metrics += [info.name.tag for info in data.experiment.metric_infos]
            if data.HasField("experiment"):  # the columns in the order the view shows them
                _sort_and_reduce_to_hparams_limit(data.experiment, None)
                columns = [info.name for info in data.experiment.hparam_infos]
            for name, value in data.session_start_info.hparams.items():
                session[name] = value.WhichOneof("kind") and getattr(
                    value, value.WhichOneof("kind")
                )
    return {"metrics": metrics, "hparams": session, "scalars": scalars, "columns": columns}


def test_tensorboard_beside_csv_records_hparams_and_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    args = ["logger=[csv,tensorboard]", "objective=iwae", "k=3", "model=one_layer", *TINY]
    args.append("trainer.log_every_n_steps=5")
    run_train(args, tmp_path, env=no_wandb_env(), run_dir=run)
    data = hparams_plugin_data(run)
    hp = data["hparams"]
    assert hp["objective"] == "iwae" and hp["k"] == 3 and hp["model"] == "one_layer"
    assert hp["estimator"] == "reparam" and hp["config/optimizer/lr"] == pytest.approx(1e-3)
    assert {"val/bound", "train/bound"} <= set(data["metrics"])
    assert {"val/bound", "train/bound"} <= data["scalars"]
    assert "hp_metric" not in data["scalars"]  # Lightning's placeholder metric is off
    assert (run / "csv" / "metrics.csv").is_file()  # the other logger still writes
    # The view leads with the choices runs are compared by; no _target_ or callback columns,
    # which stay in hparams.yaml.
    columns = data["columns"]
    assert set(columns[: len(loggers.HPARAMS_LEAD)]) == set(loggers.HPARAMS_LEAD), columns[:12]
    assert not [c for c in columns if "_target_" in c or c.startswith("config/callbacks/")]
    stored = (run / "tensorboard" / "hparams.yaml").read_text()
    assert "_target_" in stored and "callbacks:" in stored


def test_hparams_columns_lead_with_the_choices_and_drop_targets():
    params = {
        "batch_size": 20,
        "k": 5,
        "objective": "iwae",
        "config": {"callbacks": {"checkpoint": {"every": 4}}, "model": {"_target_": "x.M"}},
    }
    assert list(loggers.hparams_columns(params)) == ["objective", "k", "batch_size"]


def test_flat_hparams_are_values_tensorboard_takes():
    flat = loggers.flat_hparams({"k": 5, "config": {"model": {"latent_dims": [50]}, "x": None}})
    assert flat == {"k": 5, "config/model/latent_dims": "[50]", "config/x": "None"}


def test_mlflow_missing_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install '\.\[mlflow\]'"):
        loggers.mlflow_logger(experiment_name="iwae")


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_logger_mlflow_without_mlflow_stops_before_training(tmp_path):
    run = tmp_path / "run"
    proc = run_train(
        ["logger=mlflow", *TINY], tmp_path, env=no_wandb_env(), run_dir=run, check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "'.[mlflow]'" in lines[0], proc.stderr[-3000:]
    assert not list(run.rglob("*.ckpt")) and not (run / "metrics.json").exists()
