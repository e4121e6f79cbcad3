"""No host-device synchronisation inside a training step between logging intervals.

A device-to-host read (``.item()``, ``bool(t)``, ``float(t)``) reaches the dispatcher as
``aten._local_scalar_dense``; on a GPU each one stalls the CPU until the queue drains, which
at batch 20 costs more than the step. `SyncCounter` records every such read during training
with the batch it happened in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from iwae.launch.run import train
from tests.helpers import compose_config

READ_BACK = torch.ops.aten._local_scalar_dense.default


class _Recorder(TorchDispatchMode):
    def __init__(self, owner: SyncCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is READ_BACK:
            self.owner.reads[self.owner.batch] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter(Callback):
    """Counts device-to-host reads per training batch (``-1``: outside any batch)."""

    instances: list[SyncCounter] = []

    def __init__(self) -> None:
        self.reads: Counter[int] = Counter()
        self.batch = -1
        self._mode = _Recorder(self)
        SyncCounter.instances.append(self)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mode.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mode.__exit__(None, None, None)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self.batch = batch_idx


def counted_run(tmp_path, *extra: str) -> SyncCounter:
    """One epoch of 40 steps on 800 images, logging every 50, with a `SyncCounter`."""
    overrides = [
        "logger=csv",
        "data.split=[800,50,50]",
        "schedule.epochs=1",
        "eval.enabled=false",
        "eval.val_k=5",
        "trainer.log_every_n_steps=50",
        *extra,
        "+callbacks.sync_counter._target_=tests.test_host_sync.SyncCounter",
    ]
    SyncCounter.instances.clear()
    train(compose_config(overrides, tmp_path), tmp_path)
    return SyncCounter.instances[-1]


def test_the_counter_sees_a_read_back():
    counter = SyncCounter()
    with counter._mode:
        bool(torch.tensor([1.0]).isfinite().all())
    assert counter.reads[-1] == 1


@pytest.mark.parametrize("progress_bar", [False, True])
def test_no_read_back_between_logging_steps(tmp_path, progress_bar):
    """One epoch of 40 steps, logging every 50: apart from the first steps (step 0 logs) and
    the last (the epoch's end: validation, checkpoint), no step may read from the device."""
    counter = counted_run(tmp_path, f"trainer.enable_progress_bar={str(progress_bar).lower()}")
    assert sum(counter.reads.values()) > 0, "the counter saw nothing: is it installed?"
    between = {b: n for b, n in counter.reads.items() if 2 <= b <= 37}
    assert between == {}, f"device reads in training steps (batch: count): {between}"


def test_no_read_back_between_logging_steps_with_several_steps_per_batch(tmp_path):
    """The same with 4 optimizer steps a batch (10 batches): train/bound is read back only at
    the logging steps (0 and 50: batch 0 here), so no batch in between reads anything."""
    counter = counted_run(tmp_path, "trainer.enable_progress_bar=false", "steps_per_batch=4")
    assert counter.reads[0] > 0, "step 0 logs train/bound: its batch reads it back"
    between = {b: n for b, n in counter.reads.items() if 1 <= b <= 8}
    assert between == {}, f"device reads in training batches (batch: count): {between}"
