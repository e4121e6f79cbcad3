"""``compile=true``: the training step compiled with ``torch.compile`` keeps what an eager run
promises: exact resume (bit for bit on the CPU), ``steps_per_batch``, the non-finite guard,
and no compilation after the first step, across an epoch's smaller last batch and validation.

A cold compile takes tens of seconds, so the runs here share one process and one compiled
graph (every run has the same model and shapes; `loss_and_bound` takes the model as an
argument, so a new run reuses the graph), and only the first test runs by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch._dynamo.utils import counters

from iwae.launch.run import train
from iwae.model import IWAEModel
from iwae.objectives import IWAE, PIWAE, RWS, Renyi
from iwae.training.module import compiled_loss_and_bound, loss_and_bound
from iwae.training.nonfinite import NonFiniteError
from tests.helpers import (
    TINY_CKPT,
    assert_same_weights,
    compose_config,
    final_weights,
    no_wandb_env,
    read_metrics,
    run_train,
)

# 190 training images: 9 batches of 20 and a last one of 10 in every epoch; 3 epochs.
COMPILED = [
    *TINY_CKPT,
    "data.split=[190,50,50]",
    "model.latent_dims=[4]",
    "model.hidden_dims=[[16,16]]",
    "compile=true",
]
STOP_STEP = 17  # inside the second epoch; the last checkpoint before it is step 16


class Stopped(Exception):
    """Ends a run in the middle of training, as a kill would (nothing saved on the way out)."""


class StopAt(pl.Callback):
    """Raise `Stopped` when a batch starts at ``global_step == step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Stopped


class GraphCount(pl.Callback):
    """Dynamo's count of compiled graphs after the first step and after training ends
    (validation included)."""

    def __init__(self) -> None:
        self.after_first_step: int | None = None
        self.at_end: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.after_first_step is None:
            self.after_first_step = counters["stats"]["unique_graphs"]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_end = counters["stats"]["unique_graphs"]


GRAPHS = GraphCount()


def run(run_dir: Path, *extra: str) -> dict[str, Any]:
    cfg = compose_config([*COMPILED, *extra], run_dir)
    return train(cfg, run_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("compiled")
    run(run_dir, f"+callbacks.graphs._target_={__name__}.graph_count")
    return run_dir


def graph_count() -> GraphCount:
    """The module's `GraphCount` (Hydra instantiates this factory)."""
    return GRAPHS


def test_compiles_once_and_resumes_bit_for_bit(uninterrupted: Path, tmp_path: Path) -> None:
    # compiled at the first step (not eager), and nothing compiled after it: not for the
    # smaller last batch of each epoch, not for validation, not in the next epochs
    assert GRAPHS.after_first_step is not None and GRAPHS.after_first_step >= 1
    assert GRAPHS.at_end == GRAPHS.after_first_step
    # killed at step 17, resumed from last.ckpt (step 16): the same weights and metrics
    with pytest.raises(Stopped):
        run(
            tmp_path,
            f"+callbacks.stop._target_={__name__}.StopAt",
            f"+callbacks.stop.step={STOP_STEP}",
        )
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 16
    run(tmp_path, "resume=true")
    assert_same_weights(final_weights(tmp_path), final_weights(uninterrupted))
    resumed, expected = read_metrics(tmp_path), read_metrics(uninterrupted)
    assert resumed["train/steps"] == 30
    assert resumed == expected
    assert counters["stats"]["unique_graphs"] == GRAPHS.at_end  # the resumed fit compiled nothing


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_step(uninterrupted: Path, tmp_path: Path) -> None:
    """Same noise (``fallback_random``), same data: the compiled run differs from the eager
    one by rounding only."""
    eager = run(tmp_path, "compile=false")
    compiled = read_metrics(uninterrupted)
    assert eager["val/bound"] == pytest.approx(compiled["val/bound"], abs=1e-3)
    assert eager["test/nll"] == pytest.approx(compiled["test/nll"], abs=1e-3)


@pytest.mark.slow
def test_compiled_steps_per_batch_and_guard(uninterrupted: Path, tmp_path: Path) -> None:
    graphs = counters["stats"]["unique_graphs"]
    run(tmp_path / "s2", "steps_per_batch=2", "callbacks.periodic=null")
    assert_same_weights(final_weights(tmp_path / "s2"), final_weights(uninterrupted))
    nan_at_3 = ["+callbacks.fault._target_=tests.helpers.NonFiniteAt", "+callbacks.fault.step=3"]
    with pytest.raises(NonFiniteError, match="step 3"):
        run(tmp_path / "nan", *nan_at_3)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [IWAE(5, "dreg"), IWAE(5, "stl"), PIWAE(5, 2), RWS(5), Renyi(5, 0.5)],
    ids=repr,
)
def test_every_objective_compiles_to_the_eager_gradient(objective) -> None:
    """Graph breaks included (DReG's and PIWAE's two surrogates take ``autograd.grad``, RWS
    replays its noise): the compiled step gives the eager step's bound and gradients."""
    torch.manual_seed(0)
    model = IWAEModel(12, [3, 2], [[8], [4]])
    x = (torch.rand(6, 12) < 0.5).float()
    results = []
    for step in (loss_and_bound, compiled_loss_and_bound(x.device)):
        torch.manual_seed(1)
        model.zero_grad()
        loss, bound = step(objective, model, x)
        loss.backward()
        results.append((bound, [p.grad.clone() for p in model.parameters()]))
    (bound_e, grads_e), (bound_c, grads_c) = results
    torch.testing.assert_close(bound_c, bound_e, rtol=1e-5, atol=1e-5)
    for g_c, g_e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_ddp_trains_like_eager_ddp(tmp_path: Path) -> None:
    """Two CPU processes (gloo): the compiled step's gradients reach DDP's all-reduce, so the
    compiled run ends where the eager one does (to rounding). Through train.py: see
    tests/helpers.py on DDP inside pytest."""
    args = [*COMPILED[:-1], "trainer=ddp_cpu", "schedule.epochs=2", "threads=1"]
    metrics = {}
    for compile_step in ("true", "false"):
        run_dir = tmp_path / compile_step
        run_train([*args, f"compile={compile_step}"], run_dir=run_dir, env=no_wandb_env())
        metrics[compile_step] = read_metrics(run_dir)
    assert metrics["true"]["train/steps"] == 10  # 95 images a rank: 5 batches an epoch
    assert metrics["true"]["val/bound"] == pytest.approx(metrics["false"]["val/bound"], abs=1e-3)
