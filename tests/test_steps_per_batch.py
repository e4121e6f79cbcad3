"""Several optimizer steps per Lightning batch (``steps_per_batch``) take the
same steps as one per batch, bit for bit, resume exactly, and refuse what counts batches."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from iwae.errors import UserError
from iwae.launch.run import train
from tests.helpers import compose_config, no_wandb_env, run_train, signal_at

# 10 steps an epoch, 3 epochs: with 4 steps a batch an epoch is batches of 4, 4 and 2.
RUN = [
    "logger=csv",
    "data.split=[200,50,50]",
    "schedule=paper",
    "schedule.stages=2",  # 1 + 3 epochs, the learning rate decays after the first
    "eval.k=10",
    "eval.val_k=5",
    "trainer.log_every_n_steps=3",
    "trainer.enable_progress_bar=false",
]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def rows(run: Path, key: str) -> list[tuple[int, float]]:
    with open(run / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def one_per_batch(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("s1")
    train(compose_config([*RUN, "steps_per_batch=1"], run), run)
    return run


def test_several_steps_per_batch_are_the_same_steps(one_per_batch, tmp_path) -> None:
    metrics = train(compose_config([*RUN, "steps_per_batch=4"], tmp_path), tmp_path)
    base = json.loads((one_per_batch / "metrics.json").read_text())
    assert metrics["train/steps"] == base["train/steps"] == 40
    a, b = weights(one_per_batch), weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a), "different weights after the same steps"
    assert metrics["val/bound"] == base["val/bound"] and metrics["test/nll"] == base["test/nll"]
    # validation lands on the same optimizer steps; train/bound is logged every 3 steps
    assert rows(tmp_path, "val/bound") == rows(one_per_batch, "val/bound")
    assert [step for step, _ in rows(tmp_path, "train/bound")] == list(range(0, 40, 3))


def test_preempted_mid_batch_then_resumed_is_bit_identical(one_per_batch, tmp_path) -> None:
    """SIGTERM at step 5 (inside the second batch of 4): saved at the batch's end, resumed."""
    args = [*RUN, "steps_per_batch=4"]
    sigterm = signal_at(5, "on_before_optimizer_step", "SIGTERM")
    first = run_train([*args, *sigterm], run_dir=tmp_path, env=no_wandb_env(), check=False)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert first.returncode != 0 and saved["global_step"] == 8, first.stderr[-2000:]
    second = run_train([*args, "resume=true"], run_dir=tmp_path, env=no_wandb_env(), check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = weights(one_per_batch), weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "override, key",
    [
        ("++trainer.max_steps=7", "trainer.max_steps"),
        ("++trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
        ("++trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
        ("+callbacks.checkpoint.every_n_train_steps=5", "callbacks.checkpoint.every_n_train_steps"),
    ],
)
def test_settings_that_count_batches_are_refused(override, key, tmp_path) -> None:
    cfg = compose_config([*RUN, "steps_per_batch=4", override], tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path)
    assert f"{key} counts or cuts Lightning batches" in str(err.value)
    assert not (tmp_path / "metrics.json").exists()


def test_a_resume_refuses_another_grouping(one_per_batch, tmp_path) -> None:
    cfg = compose_config([*RUN, "steps_per_batch=2", "ckpt_path=last"], one_per_batch)
    with pytest.raises(UserError, match="steps_per_batch"):
        train(cfg, one_per_batch)
