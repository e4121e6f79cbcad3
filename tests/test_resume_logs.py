"""One history across a resume: a run SIGKILLed after a checkpoint and resumed with
``resume=true`` leaves the same ``csv/metrics.csv`` (row for row, bit for bit on the CPU) and
the same TensorBoard scalars as an uninterrupted run; W&B and MLflow log no step twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from iwae.launch.run import train
from iwae.training import loggers
from tests.helpers import TINY_CKPT, compose_config, no_wandb_env, run_train, signal_at

# Two epochs of 10 steps, a checkpoint every 4 steps, train/bound every 3: the killed process
# logs step 14 after the step-12 checkpoint, which the resumed run logs again.
LOGGED = [
    *(o for o in TINY_CKPT if not o.startswith("logger=")),
    "logger=[csv,tensorboard]",
    "schedule.epochs=2",
    "trainer.log_every_n_steps=3",
]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series as TensorBoard shows it (the folder's event files together)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_killed_and_resumed_run_keeps_the_whole_history_once(tmp_path):
    pytest.importorskip("tensorboard")
    reference, run = tmp_path / "reference", tmp_path / "run"
    train(compose_config(LOGGED, reference), reference)
    killed = run_train(
        [*LOGGED, *signal_at(15, "on_train_batch_start")],
        run_dir=run,
        env=no_wandb_env(),
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = (run / "csv" / "metrics.csv").read_text()
    assert "\n1,14," in before  # logged after the last checkpoint (step 12): logged again below
    train(compose_config([*LOGGED, "resume=true"], run), run)
    expected = (reference / "csv" / "metrics.csv").read_text()
    assert (run / "csv" / "metrics.csv").read_text() == expected
    assert expected.count("\n") > 6 and "\n0,2," in expected  # the first process's rows kept
    assert tensorboard_scalars(run / "tensorboard") == tensorboard_scalars(
        reference / "tensorboard"
    )


def test_csv_keeps_complete_rows_before_the_first_new_step(tmp_path):
    """A kill mid-write leaves part of a row: it goes with the rows to be logged again."""
    folder = tmp_path / "csv"
    folder.mkdir()
    text = "epoch,step,train/bound\r\n0,2,-211.5\r\n0,5,-198.25\r\n1,14,-216.1\r\n1,17,-19"
    (folder / "metrics.csv").write_text(text, newline="")
    logger = loggers.CSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"val/bound": -210.5, "epoch": 0}, step=9)
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert rows == [
        "epoch,step,train/bound,val/bound",
        "0,2,-211.5,",
        "0,5,-198.25,",
        "0,9,,-210.5",
    ]


def test_wandb_skips_the_steps_the_earlier_process_logged(tmp_path, monkeypatch):
    """W&B's history is append-only: a resumed process logs only what the run lacks."""
    sent: list[tuple[int, tuple[str, ...]]] = []

    def record(self, metrics, step=None):
        sent.append((step, tuple(sorted(metrics))))

    monkeypatch.setattr(loggers.pl_loggers.WandbLogger, "log_metrics", record)
    first = loggers.WandbLogger(save_dir=str(tmp_path), offline=True, id="run1", project="iwae")
    first.log_metrics({"train/bound": -1.0}, step=8)
    first.log_metrics({"train/bound": -2.0}, step=14)  # the process is killed here
    resumed = loggers.WandbLogger(save_dir=str(tmp_path), offline=True, id="run1", project="iwae")
    resumed.log_metrics({"train/bound": -2.0}, step=14)  # after the step-12 checkpoint
    resumed.log_metrics({"val/bound": -3.0}, step=14)  # not yet logged at that step
    resumed.log_metrics({"train/bound": -4.0}, step=17)
    assert sent == [
        (8, ("train/bound",)),
        (14, ("train/bound",)),
        (14, ("val/bound",)),
        (17, ("train/bound",)),
    ]
    other = loggers.WandbLogger(save_dir=str(tmp_path), offline=True, id="run2", project="iwae")
    other.log_metrics({"train/bound": -1.0}, step=8)  # another run id: its own history
    assert sent[-1] == (8, ("train/bound",))


def test_logged_steps_tell_what_a_store_holds():
    steps = loggers._LoggedSteps()
    assert not steps.seen(3, {"a": 1})
    steps.add(3, {"a": 1})
    steps.add(2, {"b": 1})  # an earlier step does not move the mark back
    assert steps.seen(2, {"c": 1}) and steps.seen(3, {"a": 1})
    assert not steps.seen(3, {"a": 1, "b": 1}) and not steps.seen(4, {"a": 1})
    assert not steps.seen(None, {"a": 1})


def test_mlflow_continues_the_stores_run_and_skips_its_steps(monkeypatch):
    """MLflow's store in the run directory holds this run only: a resumed process continues
    its latest run and logs only what it lacks (a fake client: MLflow is an extra)."""
    import sys
    import types
    from types import SimpleNamespace as Record

    history = {"train/bound": [2, 14], "val/bound": [9]}

    class Client:
        def __init__(self, tracking_uri):
            self.uri = tracking_uri

        def get_experiment_by_name(self, name):
            return Record(experiment_id="1") if name == "iwae" else None

        def search_runs(self, experiment_ids, order_by, max_results):
            return [Record(info=Record(run_id="r1"), data=Record(metrics=dict.fromkeys(history)))]

        def get_metric_history(self, run_id, key):
            return [Record(step=step) for step in history[key]]

    tracking = types.ModuleType("mlflow.tracking")
    tracking.MlflowClient = Client
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.tracking", tracking)
    sent = []
    monkeypatch.setattr(
        loggers.pl_loggers.MLFlowLogger, "log_metrics", lambda self, m, step=None: sent.append(step)
    )
    logger = loggers.MLFlowLogger.__new__(loggers.MLFlowLogger)
    logger._logged = loggers._LoggedSteps()
    assert logger._earlier_run("file:/run/mlruns", "other") is None
    assert logger._earlier_run("file:/run/mlruns", "iwae") == "r1"
    logger.log_metrics({"train/bound": -2.0}, step=14)  # the store has it
    logger.log_metrics({"val/bound": -3.0}, step=14)  # not yet at that step
    logger.log_metrics({"train/bound": -4.0}, step=17)
    assert sent == [14, 17]
