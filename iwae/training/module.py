"""The LightningModule: a model, an objective that trains it, Adam and an epoch-wise schedule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from iwae.evaluation import log_likelihood
from iwae.model import IWAEModel
from iwae.objectives import TrainingObjective
from iwae.training.optim import build_optimizer


class IWAEModule(pl.LightningModule):
    """Trains ``model`` with ``objective``; validates with the k=``val_k`` IWAE bound.

    Args:
        model: the generative model and inference network.
        objective: the bound (and gradient estimator) to train with.
        optimizer: a partial optimizer (Hydra ``_partial_: true``) completed with the parameters.
        schedule: an object with ``lr_factor(epoch)``, applied once per epoch.
        val_k: importance samples for the validation bound ``val/bound`` (nats, higher is better).
        val_seed: seeds the validation noise, apart from the training stream.
        log_every_n_steps: training metrics are logged every this many steps only: logging
            every one of the paper's ten million steps costs more than the step itself.
        config: the run's resolved config, stored in every checkpoint so it can be rebuilt.
        hparams: what the loggers record as the run's config (`iwae.training.loggers.run_config`).
        steps_per_batch: optimizer steps per Lightning batch (the DataModule then yields lists
            of that many minibatches). Lightning's work around a batch (hooks, progress,
            logging) costs about as much as a whole step at k <= 5 on a CPU
            (docs/performance.md); with S steps per batch it is paid once per S steps. The
            steps, their data and their random numbers are the same as with one step per batch.
    """

    def __init__(
        self,
        model: IWAEModel,
        objective: TrainingObjective,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Any,
        val_k: int = 100,
        val_seed: int = 0,
        log_every_n_steps: int = 50,
        config: dict | None = None,
        hparams: dict | None = None,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        # several steps per batch are taken by hand (Lightning's manual optimization)
        self.automatic_optimization = steps_per_batch == 1
        if hparams:  # Lightning hands them to every logger when fit starts (W&B's run config)
            self.save_hyperparameters(hparams)
        self.model, self.objective = model, objective
        self.optimizer_factory, self.schedule = optimizer, schedule
        self.val_k, self.val_seed = val_k, val_seed
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.config = config

    def training_step(self, x: Tensor | list[Tensor], batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            return self._several_steps(x)
        out = self.objective(self.model, x)
        if self.global_step % self.log_every_n_steps == 0:
            # Not on the progress bar: Lightning re-reads a bar value from the device at every
            # later step (.item()), a host sync per step on a GPU.
            self.log("train/bound", out.bound.mean(), batch_size=x.shape[0])
        return out.loss

    def _several_steps(self, minibatches: list[Tensor]) -> None:
        """One optimizer step per minibatch, exactly as Lightning's automatic optimization
        takes it (zero_grad, backward, step, with the same hooks: the non-finite guard masks
        the update on the device), and the learning rate of the epoch."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        while scheduler.last_epoch < self.current_epoch:  # Lightning steps it only by itself
            scheduler.step()
        # trainer.max_steps is refused (it would cut a batch): every minibatch is a step
        for x in minibatches:
            step = self.global_step
            out = self.objective(self.model, x)
            optimizer.zero_grad()
            self.manual_backward(out.loss)
            optimizer.step()
            if step % self.log_every_n_steps == 0:
                self._log_train_bound(out.bound.mean(), step)
        # Lightning counts logging steps per batch ("_batches_that_stepped", checkpointed with
        # the loop); count optimizer steps, as with one step per batch, so that val/bound and
        # train/bound share one step axis.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(minibatches) - 1

    def setup(self, stage: str) -> None:
        if not self.automatic_optimization:  # train/bound is logged every n optimizer steps
            warnings.filterwarnings("ignore", message=r"The number of training batches .* is sma")

    def _log_train_bound(self, bound: Tensor, step: int) -> None:
        """``train/bound`` to the loggers at optimizer step ``step`` (Lightning's ``self.log``
        flushes once per batch); the one host read, on logging steps only."""
        if not self.trainer.is_global_zero or not self.loggers:
            return
        metrics = {"train/bound": float(bound), "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_start(self) -> None:
        # A staged objective (vae_to_iwae, Table 2) picks its stage from the epoch.
        self.objective.on_train_epoch_start(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        # Validation draws its own seeded noise: every validation of a model gives the same
        # val/bound, and the training stream (global RNG) is left exactly where it was, so a
        # run resumed from a checkpoint taken before a validation continues bit for bit.
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.val_seed)

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        bound = log_likelihood(
            self.model, x, self.val_k, chunk_size=self.val_k, generator=self._val_generator
        ).float()
        self.log("val/bound", bound.mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        # fused Adam, no per-step accelerator probe on CPU-only machines: see iwae/training/optim.py
        optimizer = build_optimizer(self.optimizer_factory, self.model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint["iwae_config"] = self.config
