"""``last.ckpt`` is never stale: it holds the latest state at every save point and the final
state when training ends, also when ``val/bound`` stops improving (no new best.ckpt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from iwae.launch.run import train
from tests.helpers import TINY_CKPT, compose_config

# lr=0: the weights never change, so val/bound never improves after the first validation and
# Lightning's own ModelCheckpoint would leave last.ckpt at step 10 (the first best).
FROZEN = [*(o for o in TINY_CKPT if not o.startswith("callbacks")), "optimizer.lr=0"]


class LastCheckpointSteps(Callback):
    """Records, at each epoch start, the step that ``last.ckpt`` holds and the current step."""

    seen: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            saved = torch.load(last, weights_only=True)["global_step"]
            type(self).seen.append((saved, trainer.global_step))


def saved_step(run_dir: Path, name: str) -> Any:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["global_step"]


@pytest.mark.parametrize("stop, final_step", [([], 30), (["++trainer.max_steps=15"], 15)])
def test_last_checkpoint_holds_the_latest_and_the_final_state(tmp_path, stop, final_step):
    LastCheckpointSteps.seen = []
    probe = [f"+callbacks.probe._target_={__name__}.LastCheckpointSteps"]
    metrics = train(compose_config([*FROZEN, *stop, *probe], tmp_path), tmp_path)
    assert metrics["train/steps"] == final_step
    assert saved_step(tmp_path, "best.ckpt") == 10  # no later best: val/bound is flat
    assert saved_step(tmp_path, "last.ckpt") == final_step
    # At every epoch start after the first, last.ckpt holds the end of the epoch just done.
    assert LastCheckpointSteps.seen and all(saved == now for saved, now in LastCheckpointSteps.seen)
