"""A NaN/inf loss or gradient stops the run before the update with a message naming the
step, the epoch and the quantity, leaving the last good checkpoint as it was; with
``callbacks.nonfinite.action=skip`` the update is dropped and counted instead."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from iwae.errors import UserError
from iwae.launch.run import train
from iwae.training.nonfinite import NonFiniteError
from tests.helpers import DIGEST_BEFORE, TINY_CKPT, compose_config, file_digest

SHORT = [*TINY_CKPT, "schedule.epochs=2", "eval.enabled=false"]  # 20 steps, checkpoint every 4


def inject(step: int, what: str) -> list[str]:
    return [
        "+callbacks.fault._target_=tests.helpers.NonFiniteAt",
        f"+callbacks.fault.step={step}",
        f"+callbacks.fault.what={what}",
    ]


def test_nan_batch_stops_with_step_epoch_and_quantity(tmp_path):
    cfg = compose_config([*SHORT, *inject(13, "batch")], tmp_path)
    with pytest.raises(NonFiniteError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message  # one line, exit 2
    assert "non-finite loss" in message and "step 13" in message and "epoch 1" in message
    assert "callbacks.nonfinite.action=skip" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert file_digest(last) == (tmp_path / DIGEST_BEFORE).read_text()  # untouched
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 12
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_inf_gradient_with_finite_loss_is_named(tmp_path):
    cfg = compose_config([*SHORT, *inject(3, "gradient")], tmp_path)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of model\.\S+ at step 3 \("):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # none written before step 4


def test_skip_drops_the_update_and_counts_it(tmp_path):
    overrides = [*SHORT, "schedule.epochs=1", *inject(5, "batch")]
    metrics = train(
        compose_config([*overrides, "callbacks.nonfinite.action=skip"], tmp_path), tmp_path
    )
    assert metrics["train/steps"] == 10
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    guard = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("NonFiniteGuard"))
    assert guard == {"skipped": 1}
    # Adam's per-parameter step counts show exactly one update was dropped.
    steps = {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()}
    assert steps == {9.0}
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert math.isfinite(metrics["val/bound"])


def test_bad_action_is_a_user_error(tmp_path):
    cfg = compose_config([*SHORT, "callbacks.nonfinite.action=ignore"], tmp_path)
    with pytest.raises(UserError, match="callbacks.nonfinite.action must be one of stop, skip"):
        train(cfg, tmp_path)


class KeepWeightsOnError(Callback):
    """Keeps the module's weights as they were when the run stopped."""

    weights: dict[str, torch.Tensor] = {}

    def on_exception(self, trainer, pl_module, exception) -> None:
        KeepWeightsOnError.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_stop_masks_every_update_until_the_delayed_read(tmp_path):
    """The flag is read only every few steps (no host sync per step), yet no update from the
    bad step on reaches the weights: at the read, the weights are still the last checkpoint's."""
    overrides = [
        *SHORT,
        *inject(12, "batch"),  # last.ckpt written after 12 updates, then step 12 is bad
        "callbacks.nonfinite.check_every_n_steps=100",  # read at the next checkpoint (16)
        "+callbacks.keep._target_=tests.test_nonfinite.KeepWeightsOnError",
    ]
    with pytest.raises(NonFiniteError, match="non-finite loss at step 12 "):
        train(compose_config(overrides, tmp_path), tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 12
    assert KeepWeightsOnError.weights.keys() == checkpoint["state_dict"].keys()
    for name, saved in checkpoint["state_dict"].items():
        assert torch.equal(KeepWeightsOnError.weights[name], saved), name
