"""Table 2 machinery: a staged objective switches at its epoch in a real run, and init_from
starts a new run from saved weights only (fresh optimizer, epoch 0, weights_only load)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from iwae.errors import UserError
from iwae.launch.assembly import build, build_module, load_init_weights
from iwae.launch.run import train
from tests.helpers import TINY, compose_config

# TINY at the schedule's own length (table2_small's: its objective switches where it ends)
RUN = [*(o for o in TINY if not o.startswith("schedule.")), "logger=none", "eval.k=10"]


class StageRecorder(Callback):
    """Records which objective trains each epoch (read back by the test)."""

    seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            StageRecorder.seen.append((trainer.current_epoch, pl_module.objective.current.name))


def test_staged_run_switches_at_its_epoch_and_measures_the_model_there(tmp_path):
    StageRecorder.seen = []
    cfg = compose_config(
        [
            *RUN,
            "experiment=table2_small",
            "k=3",
            "objective.switch_epoch=2",
            "trainer.max_epochs=3",
            "eval.k=10",
            "logger=csv",
            "callbacks=diagnostics",
            "callbacks.gradient_diagnostics.every_n_steps=10",
            "callbacks.gradient_diagnostics.draws=3",
            "+callbacks.recorder._target_=tests.test_finetune.StageRecorder",
        ],
        tmp_path,
    )
    metrics = train(cfg, tmp_path)
    assert StageRecorder.seen == [(0, "vae"), (1, "vae"), (2, "iwae")]
    before = json.loads((tmp_path / "switch_metrics.json").read_text())
    assert before["epoch"] == 2 and before["objective"] == "vae" and before["k"] == 1
    assert before["eval/k"] == 10 and before["test/nll"] > 0
    assert metrics["objective"] == "vae_to_iwae" and metrics["k"] == 3
    assert before["test/nll"] != metrics["test/nll"]  # the model changed after the switch
    # the diagnostics callback logged through Lightning's logger, once every 10 steps
    rows = (next(tmp_path.rglob("metrics.csv"))).read_text()
    header = rows.splitlines()[0].split(",")
    assert {"diag/ess", "diag/ess_fraction", "diag/snr_inference", "diag/snr_generative"} <= set(
        header
    )
    col = header.index("diag/snr_inference")
    logged = [line.split(",")[col] for line in rows.splitlines()[1:]]
    assert sum(1 for v in logged if v) == 3  # steps 0, 10, 20 of 30


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae")
    cfg = compose_config(
        [*RUN, "objective=vae", "k=1", "schedule.epochs=1", "eval.enabled=false"], out
    )
    train(cfg, out)
    return out / "checkpoints" / "last.ckpt"


def test_init_from_copies_the_weights_and_nothing_else(vae_checkpoint, tmp_path):
    saved = torch.load(vae_checkpoint, weights_only=True)
    cfg = compose_config([*RUN, "objective=iwae", "k=2", "schedule.epochs=1"], tmp_path)
    datamodule = build(cfg.data)
    module = build_module(cfg, datamodule)
    load_init_weights(module, vae_checkpoint)
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, saved["state_dict"][name], rtol=0, atol=0)

    # a whole run: starts at epoch 0 with a fresh optimizer at the configured learning rate
    cfg = compose_config(
        [
            *RUN,
            "objective=iwae",
            "k=2",
            "schedule.epochs=1",
            "optimizer.lr=1e-4",
            f"init_from={vae_checkpoint}",
            "eval.enabled=false",
        ],
        tmp_path,
    )
    metrics = train(cfg, tmp_path)
    assert metrics["train/epochs"] == 1 and metrics["train/steps"] == 10
    tuned = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    adam = tuned["optimizer_states"][0]
    assert adam["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert int(adam["state"][0]["step"]) == 10  # Adam's moments were not carried over
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_init_from_refuses_a_model_that_does_not_fit(vae_checkpoint, tmp_path):
    cfg = compose_config(
        [*RUN, "model=two_layer", "schedule.epochs=1", f"init_from={vae_checkpoint}"], tmp_path
    )
    with pytest.raises(UserError, match="another architecture"):
        train(cfg, tmp_path)


def test_init_from_loads_weights_only(vae_checkpoint, tmp_path):
    ckpt = torch.load(vae_checkpoint, weights_only=True)
    ckpt["payload"] = pickle.loads(pickle.dumps(Path("/x")))  # an object, not plain data
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(ckpt, unsafe)
    cfg = compose_config([*RUN, "objective=vae", "k=1"], tmp_path)
    module = build_module(cfg, build(cfg.data))
    with pytest.raises(UserError, match="refused to load"):
        load_init_weights(module, unsafe)
    with pytest.raises(UserError, match="init_from: checkpoint not found"):
        load_init_weights(module, tmp_path / "missing.ckpt")
